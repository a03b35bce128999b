#pragma once
// A client of etcd's v3 JSON gateway (the HTTP/JSON face of its gRPC API,
// served on the client port since etcd 3.4: "/v3/kv/range", "/v3/kv/txn",
// "/v3/lease/grant", "/v3/lease/keepalive", "/v3/lease/revoke",
// "/v3/lease/timetolive", "/v3/watch", "/v3/auth/authenticate"), as
// Patroni's etcd3 module speaks it: no gRPC. Keys and values travel in
// base64; 64-bit numbers arrive as JSON strings. Runs on the project's one
// HTTP client (core/http/client.hpp).
//
// Several endpoints may be given: a request that cannot reach one (refused,
// timed out) is tried on the next, and the one that answered is tried first
// next time. An etcd that answers with an error is not retried elsewhere.
//
// Errors: Errc::unreachable or Errc::timeout when no endpoint answered (the
// message names each endpoint); an error etcd answered keeps its message
// ("etcd http://127.0.0.1:2379: put 'k': etcdserver: requested lease not
// found") with its code mapped (wrong user or password: Errc::unauthorized,
// permission denied: Errc::forbidden, not found: Errc::not_found).
//
// Thread-safe: the calls of several threads run at once, each on its own
// connection (idle ones are kept for the next calls).

#include "core/http/client.hpp"
#include "core/util/error.hpp"

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace npme::ha {

struct EtcdOptions {
  std::vector<std::string> endpoints;      // "http(s)://host:2379", at least one
  std::chrono::milliseconds timeout{2000}; // per request (a watch: see watch())
  // TLS: an extra CA bundle to trust (PEM), and a client certificate and
  // key for etcd's --client-cert-auth. Empty: none.
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  // etcd's own authentication (auth enable): a user and password exchanged
  // for a token at /v3/auth/authenticate, sent in the Authorization header
  // and renewed when etcd says it is invalid. Empty user: none.
  std::string user;
  std::string password;
};

// One key as etcd holds it.
struct KeyValue {
  std::string key;
  std::string value;
  std::int64_t create_revision = 0;
  std::int64_t mod_revision = 0;
  std::int64_t version = 0;
  std::int64_t lease = 0; // 0: none
};

struct RangeResult {
  std::int64_t revision = 0; // the store's revision when it answered
  std::vector<KeyValue> kvs;
};

struct TxnResult {
  std::int64_t revision = 0; // the store's revision after the transaction
  bool succeeded = false;    // the compares held (the success ops ran)
};

struct LeaseTime {
  bool found = false;       // false: expired or revoked
  std::int64_t ttl = 0;     // seconds left
  std::int64_t granted = 0; // seconds granted
};

class Etcd {
public:
  explicit Etcd(EtcdOptions options);
  ~Etcd();
  Etcd(const Etcd&) = delete;
  Etcd& operator=(const Etcd&) = delete;

  // The key `key` (no kvs when absent), or every key starting with `key`
  // when `prefix`.
  Expected<RangeResult> range(const std::string& key, bool prefix = false);

  // Puts `key` = `value`, attached to `lease` (0: none).
  Expected<std::int64_t> put(const std::string& key, const std::string& value, std::int64_t lease = 0);

  // Deletes `key` (every key under it when `prefix`); the number deleted.
  Expected<std::int64_t> remove(const std::string& key, bool prefix = false);

  // Creates `key` = `value` with `lease` only if it does not exist
  // (compare create_revision == 0), in one transaction.
  Expected<TxnResult> create(const std::string& key, const std::string& value, std::int64_t lease);

  // Puts `key` = `value` with `lease` only if its mod_revision is still
  // `mod_revision` (an update by its holder).
  Expected<TxnResult> put_if(const std::string& key, const std::string& value, std::int64_t lease,
                             std::int64_t mod_revision);

  // Deletes `key` only if its mod_revision is still `mod_revision`.
  Expected<TxnResult> remove_if(const std::string& key, std::int64_t mod_revision);

  // A new lease of `ttl` seconds; its id.
  Expected<std::int64_t> grant(std::int64_t ttl);

  // Renews `lease` once; the seconds it has now. Errc::not_found when etcd
  // no longer has it (expired or revoked: every key it held is gone).
  Expected<std::int64_t> keepalive(std::int64_t lease);

  // Revokes `lease` (its keys are deleted). An unknown lease is not an error.
  Expected<void> revoke(std::int64_t lease);

  // How long `lease` has left (found false when etcd does not have it).
  Expected<LeaseTime> time_to_live(std::int64_t lease);

  // Watches `key` (or the keys under it when `prefix`) from `start_revision`
  // (0: from now) and calls `on_event` for each change (its kv; `deleted`
  // for a delete, whose kv has only key and mod_revision) until `on_event`
  // returns false, `timeout` passes (then returns normally), or the
  // connection fails. Blocks the caller. A connection that fails before
  // anything arrived is tried on the next endpoint. Errc::conflict when
  // `start_revision` is compacted away (read again, then watch from the
  // revision read); an exception of `on_event` reaches the caller.
  Expected<void> watch(const std::string& key, bool prefix, std::int64_t start_revision,
                       std::chrono::milliseconds timeout,
                       const std::function<bool(const KeyValue& kv, bool deleted)>& on_event);

  // Interrupts a watch or request under way on another thread
  // (Errc::interrupted); later calls work again. Thread-safe.
  void abort();

  // The endpoint that answered last, for messages.
  std::string endpoint() const;

private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

} // namespace npme::ha
