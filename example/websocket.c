/*
 * websocket.c - an echo socket.
 *
 * Every text message sent to /websocket comes back as "You: <message>".
 */
#include <cweb.h>

#define ECHO_PREFIX "You: "

static void echo_message(struct cweb_context *ctx, websocket_t *ws, const char *message, size_t length)
{
    (void)ctx;
    /* message is length-delimited and may not be NUL-terminated. */
    size_t prefix = strlen(ECHO_PREFIX);
    char *reply = malloc(prefix + length + 1);
    if (!reply)
        return;
    memcpy(reply, ECHO_PREFIX, prefix);
    memcpy(reply + prefix, message, length);
    reply[prefix + length] = '\0';
    ws->send(ws, reply, prefix + length);
    free(reply);
}

export module_t config = {
    .name = "websocket",
    .author = "cweb",
    .websockets = {
        {"/websocket", NULL, echo_message, NULL},
    },
    .ws_size = 1,
};
