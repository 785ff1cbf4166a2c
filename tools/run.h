// `rocket run`: Pocket's launcher. Starts a frontend in fresh mount and IPC
// namespaces (and, with --no-net, a network namespace) where the only Rocket
// endpoint it can see is the server's socket: /tmp, /var/tmp, /run and
// /dev/shm are empty tmpfs mounts but for that socket, System V IPC and POSIX
// message queues are its own, and it gets ROCKET_SOCKET. Its sessions still
// work, since a Rocket session needs no names: the server hands it the
// segments' descriptors. As root it can also drop to another account
// (--user); as another user it needs unprivileged user namespaces.
#pragma once

#include <CLI/CLI.hpp>

namespace rocket::tools {

void add_run(CLI::App& app);

}  // namespace rocket::tools
