// SPDX-License-Identifier: Apache-2.0
// libsystemd's daemon and bus APIs. Only EchoSystemd imports this module.
// sd_notifyf is variadic and does not import into Swift: format in Swift and
// call sd_notify. sd_bus_message_read is variadic too: the one read echod
// needs is wrapped below.
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-daemon.h>

/// The (uo) "Job" property of a unit object: the job's id (0: none) and a malloc'ed copy of
/// its object path in *job_path (free it). Returns a negative errno on failure.
static inline int echod_bus_unit_job(sd_bus *bus, const char *unit_path, uint32_t *id, char **job_path) {
    sd_bus_error error = SD_BUS_ERROR_NULL;
    sd_bus_message *reply = NULL;
    *job_path = NULL;
    int r = sd_bus_get_property(bus, "org.freedesktop.systemd1", unit_path, "org.freedesktop.systemd1.Unit",
                                "Job", &error, &reply, "(uo)");
    sd_bus_error_free(&error);
    if (r < 0) return r;
    const char *path = NULL;
    r = sd_bus_message_read(reply, "(uo)", id, &path);
    if (r >= 0) {
        *job_path = strdup(path ? path : "/");
        if (*job_path == NULL) r = -ENOMEM;
    }
    sd_bus_message_unref(reply);
    return r;
}
