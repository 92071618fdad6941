/*
 * ws.h - c-web-modules' <ws.h>, for modules that include it by name.
 * The original's WebSocket server. websocket_t and the callbacks a module declares are in cweb.h.
 * Its functions are declared so that a call fails to compile with the
 * reason, not with a linker error; its types are not provided.
 */
#ifndef CWEB_COMPAT_WS_H
#define CWEB_COMPAT_WS_H
#include "cweb.h"

int ws_init() CWEB_UNAVAILABLE("ws_init: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int ws_shutdown() CWEB_UNAVAILABLE("ws_shutdown: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int ws_handle_client() CWEB_UNAVAILABLE("ws_handle_client: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int ws_confirm_open() CWEB_UNAVAILABLE("ws_confirm_open: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int ws_update_container() CWEB_UNAVAILABLE("ws_update_container: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");
int ws_force_close() CWEB_UNAVAILABLE("ws_force_close: part of the c-web-modules server itself; in cweb the server is a separate process a module cannot drive");

#endif
