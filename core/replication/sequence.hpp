#pragma once
// The follower's position and the white-list, small files in the data
// directory (DESIGN.md §2).

#include "core/util/error.hpp"
#include "core/util/fs.hpp"

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace npme::replication {

// Reads `<data>/sequence` (ASCII "<seq>\n"); a missing or empty file is 0.
// Errc::invalid when it holds anything else.
Expected<std::int64_t> read_sequence(const std::filesystem::path& data_dir);

// Writes `<data>/sequence` atomically (temp file, fsync, rename). A relaxed
// write skips the fsyncs: after a power loss the file may name an earlier
// change, or be empty (start from 0). Never a later one, since the follower
// writes it only after committing (durably) what it names, and re-applying
// changes is idempotent, so a relaxed write costs at most repeated work.
Expected<void> write_sequence(const std::filesystem::path& data_dir, std::int64_t seq,
                              util::Durability durability = util::Durability::durable);

// Empties `<data>/sequence`: the follower starts again from 0.
Expected<void> truncate_sequence(const std::filesystem::path& data_dir);

// Reads `<data>/whitelist`: one package name per line; blank lines and
// lines starting with '#' are ignored; missing file = empty list.
Expected<std::vector<std::string>> read_whitelist(const std::filesystem::path& data_dir);

// Writes the white-list atomically, sorted and without duplicates.
Expected<void> write_whitelist(const std::filesystem::path& data_dir, std::vector<std::string> names);

// Changes the white-list: reads it, lets `change` edit the names, writes
// it back (sorted, without duplicates) when anything changed, all under one
// lock so that concurrent changes in this process never lose each other.
// Returns the names as written.
Expected<std::vector<std::string>>
update_whitelist(const std::filesystem::path& data_dir,
                 const std::function<Expected<void>(std::vector<std::string>& names)>& change);

} // namespace npme::replication
