/*
 * list.h - c-web-modules' <list.h>, for modules that include it by name.
 * A singly linked list of the original's server.
 * Its functions are declared so that a call fails to compile with the
 * reason, not with a linker error; its types are not provided.
 */
#ifndef CWEB_COMPAT_LIST_H
#define CWEB_COMPAT_LIST_H
#include "cweb.h"

int list_create() CWEB_UNAVAILABLE("list_create: a c-web-modules server utility; a cweb module is not linked against a server binary, so bring your own (or a library)");
int list_destroy() CWEB_UNAVAILABLE("list_destroy: a c-web-modules server utility; a cweb module is not linked against a server binary, so bring your own (or a library)");
int list_add() CWEB_UNAVAILABLE("list_add: a c-web-modules server utility; a cweb module is not linked against a server binary, so bring your own (or a library)");
int list_remove() CWEB_UNAVAILABLE("list_remove: a c-web-modules server utility; a cweb module is not linked against a server binary, so bring your own (or a library)");
int list_iterate() CWEB_UNAVAILABLE("list_iterate: a c-web-modules server utility; a cweb module is not linked against a server binary, so bring your own (or a library)");

#endif
