/*
 * http.h - c-web-modules' <http.h>, for modules that include it by name.
 * The request, response, key/value store and WebSocket types are in cweb.h.
 */
#ifndef CWEB_COMPAT_HTTP_H
#define CWEB_COMPAT_HTTP_H
#include "cweb.h"

#endif
