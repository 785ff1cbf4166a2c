// Umbrella header: everything a Rocket application needs.
#pragma once

#include "rocket/mover/mover.h"
#include "rocket/pocket/capabilities.h"
#include "rocket/pocket/lending.h"
#include "rocket/policy/skyrocket.h"
#include "rocket/runtime/builtin_ops.h"
#include "rocket/runtime/client.h"
#include "rocket/runtime/policy.h"
#include "rocket/runtime/server.h"
#include "rocket/status.h"
