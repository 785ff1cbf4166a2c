// Writing a small file that readers may open at any moment.
#pragma once

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "rocket/status.h"

namespace rocket::detail {

// Writes `contents` to `path` through a temporary file renamed over it, so a
// reader sees the old file or the new one, never half of one. Creates the
// directory if needed.
inline Status replace_file(const std::string& path, std::string_view contents) {
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);  // a failure shows as the open's
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    if (!f) return errno_status("open " + tmp, errno);
    f << contents;
    if (!f) return errno_status("write " + tmp, errno);
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) return internal_error("rename " + tmp + ": " + ec.message());
  return ok_status();
}

}  // namespace rocket::detail
