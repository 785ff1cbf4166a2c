// Fork awareness. fork() copies the calling thread only, and with it every
// session this process opened (its mappings and socket) and every engine
// (whose worker threads stay behind in the parent). A child must not use
// either: it would push on rings the parent pushes on, take the parent's
// completions, free blocks the parent still reads, or wait on workers that do
// not exist. Objects note the generation they were made in and compare.
#pragma once

#include <cstdint>

namespace rocket::detail {

// How many fork()s lie between this process and the one that first called
// this (0 there). The first call registers the fork handler, so an object
// that records the generation when it is made sees every later fork. Cheap:
// one relaxed atomic load after the first call.
uint64_t fork_generation() noexcept;

}  // namespace rocket::detail
