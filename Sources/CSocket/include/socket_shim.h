#ifndef DIFFUSIOND_SOCKET_SHIM_H
#define DIFFUSIOND_SOCKET_SHIM_H
#include <sys/types.h>

/// The peer of a connected Unix socket (SO_PEERCRED; struct ucred needs
/// _GNU_SOURCE, which Swift's Glibc module does not set). Returns 0 or an errno.
int dfn_peer_credentials(int fd, uid_t *uid, gid_t *gid, pid_t *pid);

/// Sends `message` as one datagram to the AF_UNIX socket at `path` (a leading
/// '@' names an abstract socket, as $NOTIFY_SOCKET may). Returns 0 or an errno.
int dfn_send_datagram(const char *path, const char *message);

#endif
