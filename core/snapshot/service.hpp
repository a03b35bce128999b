#pragma once
// Snapshots taken inside `npme serve`, for the admin console (GET/POST
// /api/v1/snapshots): the setting `snapshot.dir` names the directory they go
// to and are listed from. A create is a job on a thread of its own, polled
// for its progress (bytes of tarballs written of the total); one at a time.
//
// Threads: list(), start_create() and job() answer from memory or read a
// directory, so the admin API may call them from its workers; stop() ends
// a create under way (it leaves no file behind) and joins its thread.

#include "core/audit/audit.hpp"
#include "core/settings/settings.hpp"
#include "core/snapshot/snapshot.hpp"
#include "core/util/error.hpp"

#include <nlohmann/json.hpp>

#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace npme::snapshot {

class Service {
public:
  struct Context {
    // The settings in force now (snapshot.dir and the host directories).
    std::function<std::shared_ptr<const settings::Settings>()> settings;
    // The instance's status document (GET /api/v1/status): the manifest's
    // reported state.
    std::function<nlohmann::json()> status;
    // Where a finished create is recorded ("snapshot.create"); may be null.
    audit::Log* audit = nullptr;
  };

  explicit Service(Context context);
  ~Service(); // stop()
  Service(const Service&) = delete;
  Service& operator=(const Service&) = delete;

  // {"dir": snapshot.dir ("" when unset), "snapshots": [{"file","bytes",
  //  "created","instance_id","role","update_seq","counts"} or {"file",
  //  "bytes","problem"}, newest first], "job": the latest create's job or
  //  null}. An unset or missing directory lists nothing.
  Expected<nlohmann::json> list() const;
  // Starts a snapshot into snapshot.dir (made when missing, mode 0700);
  // returns the job's id at once. `actor` and `address` name who asked, for
  // the audit log. Errc::precondition when snapshot.dir is unset,
  // Errc::conflict while another create runs, Errc::failed once stopping.
  Expected<std::string> start_create(std::string actor, std::string address);
  // {"id","state":"running|done|failed|interrupted","started","finished",
  //  "done_bytes","total_bytes","file","bytes","error":{"code","message"}|null};
  //  nullopt for an unknown id.
  std::optional<nlohmann::json> job(const std::string& id) const;
  // Interrupts a create under way and joins its thread. Idempotent.
  void stop();

private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

} // namespace npme::snapshot
