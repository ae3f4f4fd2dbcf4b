// SPDX-License-Identifier: Apache-2.0
// libsystemd's daemon API. Only EchoSystemd imports this module.
// sd_notifyf is variadic and does not import into Swift: format in Swift and
// call sd_notify.
#include <systemd/sd-daemon.h>
