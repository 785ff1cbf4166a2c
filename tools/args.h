// Small parsers shared by the rocket tool's subcommands.
#pragma once

#include <cctype>
#include <cstddef>
#include <cstdlib>
#include <string>
#include <vector>

#include "rocket/status.h"

namespace rocket::tools {

// The server socket the tools use when none is given: $ROCKET_SOCKET, else
// /tmp/rocket.sock (what `rocket run` sets for the frontends it starts).
inline std::string default_socket() {
  if (const char* env = std::getenv("ROCKET_SOCKET")) return env;
  return "/tmp/rocket.sock";
}

// "a,b,,c" -> {"a", "b", "c"}.
inline std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t b = 0;
  while (b <= s.size()) {
    size_t e = s.find(',', b);
    if (e == std::string::npos) e = s.size();
    if (e > b) out.push_back(s.substr(b, e - b));
    b = e + 1;
  }
  return out;
}

// "1,2,4" -> counts, each from lo to hi.
inline Result<std::vector<unsigned>> parse_counts(const std::string& s, unsigned lo, unsigned hi) {
  std::vector<unsigned> out;
  for (const auto& c : split(s)) {
    const bool digits = !c.empty() && c.size() <= 9 && c.find_first_not_of("0123456789") == std::string::npos;
    const unsigned long v = digits ? std::stoul(c) : 0;
    if (!digits || v < lo || v > hi) {
      return invalid_argument("'" + c + "' is not a count from " + std::to_string(lo) + " to " + std::to_string(hi));
    }
    out.push_back(static_cast<unsigned>(v));
  }
  return out;
}

// "64", "4K", "16M", "1G" -> bytes.
inline Result<size_t> parse_size(const std::string& s) {
  if (s.empty()) return invalid_argument("empty size");
  size_t mult = 1;
  std::string num = s;
  char last = static_cast<char>(std::toupper(static_cast<unsigned char>(s.back())));
  if (last == 'K' || last == 'M' || last == 'G') {
    mult = last == 'K' ? 1024 : last == 'M' ? 1024 * 1024 : size_t{1} << 30;
    num = s.substr(0, s.size() - 1);
  }
  if (num.empty() || num.find_first_not_of("0123456789") != std::string::npos || num.size() > 12) {
    return invalid_argument("bad size '" + s + "' (use 64, 4K, 16M, 1G)");
  }
  return static_cast<size_t>(std::stoull(num)) * mult;
}

// Bytes -> "64", "4K", "16M".
inline std::string human_size(size_t n) {
  if (n >= (size_t{1} << 20) && n % (size_t{1} << 20) == 0) return std::to_string(n >> 20) + "M";
  if (n >= 1024 && n % 1024 == 0) return std::to_string(n >> 10) + "K";
  return std::to_string(n);
}

}  // namespace rocket::tools
