#pragma once
// Where the registry gets packages it does not hold, or holds as copies:
// the uplink (a public registry, core/uplink) or, on a replica, the
// upstream asked by name. The registry asks before serving a read and
// before accepting a write; the source answers from memory when it can and
// otherwise fetches on its own threads and calls back (the registry then
// answers through a deferred Response).

#include "core/store/store.hpp"
#include "core/util/error.hpp"

#include <functional>
#include <optional>
#include <string>

namespace npme::registry {

// What a read needs of package `name`.
struct Need {
  enum class Kind { packument, version, tarball };
  Kind kind = Kind::packument;
  std::string detail; // the version or dist-tag (version); the tarball's relative path (tarball)
};

// How a fetch ended.
struct SourceOutcome {
  enum class Kind {
    ready,     // the store now holds what was needed (or it was already there): serve it
    stale,     // the source failed, the held copy is served with a Warning (`message`)
    not_found, // the source does not have it either
    failed,    // `status` (502, 504, 403) with `message`
  };
  Kind kind = Kind::ready;
  int status = 0;
  std::string message;
};

class PackageSource {
public:
  virtual ~PackageSource() = default;

  // Decides a read of `name` that needs `need`; `held` is the stored
  // document (nullopt when not held). Returns nullopt to serve what is held
  // now (a Warning text to add may be returned through `warning`), or an
  // outcome to answer at once (a name never fetched: not_found); or sets
  // `fetch` true when the read must wait for fetch(). Never blocks.
  // False while the source has nothing to add (no uplink, no upstream):
  // every read is served from the store as it is, and the registry skips
  // reading the stored head for decide(). Never blocks.
  virtual bool enabled() const = 0;

  struct Decision {
    bool fetch = false;
    std::optional<SourceOutcome> answer; // when set: answer with it now
    std::string warning;                 // serve held, adding this Warning
  };
  virtual Decision decide(const std::string& name, const std::optional<store::Head>& held, const Need& need) = 0;

  // Fetches what `need` needs of `name` into the store on the source's own
  // threads, then calls `done` (from one of them). Concurrent calls for the
  // same thing share one fetch.
  virtual void fetch(const std::string& name, const Need& need, std::function<void(SourceOutcome)> done) = 0;

  // Checks a write (publish, dist-tag, deprecate, unpublish) of `name` whose
  // stored document is `held`: Errc::forbidden when the name comes from the
  // source. Called on a worker.
  virtual Expected<void> check_write(const std::string& name, const std::optional<store::Head>& held) = 0;
};

} // namespace npme::registry
