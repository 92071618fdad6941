/*
 * server.h - c-web-modules' <server.h>, for modules that include it by name.
 * The original's server state. A module reaches the server only through struct cweb_context.
 * Its functions are declared so that a call fails to compile with the
 * reason, not with a linker error; its types are not provided.
 */
#ifndef CWEB_COMPAT_SERVER_H
#define CWEB_COMPAT_SERVER_H
#include "cweb.h"

#include "container.h"
#include "scheduler.h"
#include "db.h"
#include "crypto.h"
#include "router.h"
#include "ws.h"
#include "jobs.h"
#include "shutdown.h"
#include "active_conn.h"


#endif
