/* faultfs: an LD_PRELOAD shim that injects storage faults into the real server binary, for tests.
 *
 * Only files and directories under $FAULTFS_DIR (an absolute, canonical path) are touched; everything
 * else (sockets, pipes, stdout) passes straight through. Faults are switched by control files in
 * $FAULTFS_CTL, checked on every call, so a test turns them on and off while the server runs:
 *
 *   enospc      write/pwrite/writev fail with ENOSPC; a call of more than one byte first writes half of
 *               it for real and reports that, so a write_all loop leaves torn bytes behind (all but the
 *               last byte of the batch) before it sees the error (a direct write's half goes through the
 *               page cache, as a half block cannot be written directly).
 *   eio_sync    fsync/fdatasync/sync_file_range fail with EIO (after doing nothing).
 *   eio_once    the next fsync/fdatasync fails with EIO, and the mode switches itself off.
 *   block_sync  fsync/fdatasync block until the file is removed (then do the real sync).
 *   eio_trunc   ftruncate fails with EIO.
 *   emfile      open/openat/creat of a path under the directory fail with EMFILE.
 *
 * If $FAULTFS_LOG is set, every fsync/fdatasync of a watched descriptor appends "<call> <path>\n" to it.
 * Build: cc -shared -fPIC -O2 -o faultfs.so faultfs.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static char watch[PATH_MAX];
static size_t watch_len;
static char ctl[PATH_MAX];
static char logpath[PATH_MAX];

__attribute__((constructor)) static void faultfs_init(void) {
    const char *d = getenv("FAULTFS_DIR");
    const char *c = getenv("FAULTFS_CTL");
    const char *l = getenv("FAULTFS_LOG");
    if (d && c) {
        snprintf(watch, sizeof watch, "%s", d);
        watch_len = strlen(watch);
        snprintf(ctl, sizeof ctl, "%s", c);
    }
    if (l) snprintf(logpath, sizeof logpath, "%s", l);
}

static int under(const char *path) {
    return watch_len && strncmp(path, watch, watch_len) == 0 &&
           (path[watch_len] == '/' || path[watch_len] == '\0');
}

/* The path of a watched file or directory descriptor into `path`, or 0. */
static int watched(int fd, char *path) {
    struct stat st;
    if (!watch_len || fstat(fd, &st) != 0 || !(S_ISREG(st.st_mode) || S_ISDIR(st.st_mode))) return 0;
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, PATH_MAX - 1);
    if (n < 0) return 0;
    path[n] = '\0';
    return under(path);
}

static int active(const char *name) {
    char p[PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/%s", ctl, name);
    return access(p, F_OK) == 0;
}

static void note(const char *call, const char *path) {
    if (!logpath[0]) return;
    char line[PATH_MAX + 32];
    int n = snprintf(line, sizeof line, "%s %s\n", call, path);
    int fd = (int)syscall(SYS_openat, AT_FDCWD, logpath, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return;
    if (syscall(SYS_write, fd, line, (size_t)n) < 0) { /* best effort */ }
    syscall(SYS_close, fd);
}

#define REAL(ret, name, ...) \
    static ret (*real_##name)(__VA_ARGS__); \
    if (!real_##name) real_##name = (ret (*)(__VA_ARGS__))dlsym(RTLD_NEXT, #name)

/* ENOSPC mode: how much of `count` bytes to really write (0: fail now). */
static size_t torn(size_t count) { return count > 1 ? count / 2 : 0; }

ssize_t write(int fd, const void *buf, size_t count) {
    REAL(ssize_t, write, int, const void *, size_t);
    char path[PATH_MAX];
    if (watched(fd, path) && active("enospc")) {
        size_t part = torn(count);
        if (!part) { errno = ENOSPC; return -1; }
        return real_write(fd, buf, part);
    }
    return real_write(fd, buf, count);
}

static ssize_t pwrite_impl(ssize_t (*real)(int, const void *, size_t, off_t), int fd, const void *buf,
                           size_t count, off_t off) {
    char path[PATH_MAX];
    if (watched(fd, path) && active("enospc")) {
        size_t part = torn(count);
        if (!part) { errno = ENOSPC; return -1; }
        /* A direct write (O_DIRECT) of half a block would be refused: the torn half is written
         * through the page cache (the flag cleared for this call, the log's writes being serial). */
        int flags = fcntl(fd, F_GETFL);
        if (flags >= 0 && (flags & O_DIRECT) && fcntl(fd, F_SETFL, flags & ~O_DIRECT) == 0) {
            ssize_t n = real(fd, buf, part, off);
            int saved = errno;
            fcntl(fd, F_SETFL, flags);
            errno = saved;
            return n;
        }
        return real(fd, buf, part, off);
    }
    return real(fd, buf, count, off);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t off) {
    REAL(ssize_t, pwrite, int, const void *, size_t, off_t);
    return pwrite_impl(real_pwrite, fd, buf, count, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t off) {
    REAL(ssize_t, pwrite64, int, const void *, size_t, off_t);
    return pwrite_impl(real_pwrite64, fd, buf, count, off);
}

ssize_t writev(int fd, const struct iovec *iov, int n) {
    REAL(ssize_t, writev, int, const struct iovec *, int);
    char path[PATH_MAX];
    if (watched(fd, path) && active("enospc")) {
        /* Only the first buffer, torn: a short write, then ENOSPC. */
        if (n < 1) return real_writev(fd, iov, n);
        size_t part = torn(iov[0].iov_len);
        if (!part) { errno = ENOSPC; return -1; }
        return write(fd, iov[0].iov_base, part);
    }
    return real_writev(fd, iov, n);
}

ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t off) {
    REAL(ssize_t, pwritev, int, const struct iovec *, int, off_t);
    char path[PATH_MAX];
    if (watched(fd, path) && active("enospc")) { errno = ENOSPC; return -1; }
    return real_pwritev(fd, iov, n, off);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int n, off_t off) {
    REAL(ssize_t, pwritev64, int, const struct iovec *, int, off_t);
    char path[PATH_MAX];
    if (watched(fd, path) && active("enospc")) { errno = ENOSPC; return -1; }
    return real_pwritev64(fd, iov, n, off);
}

static int sync_fault(int fd, const char *call) {
    char path[PATH_MAX];
    if (!watched(fd, path)) return 0;
    note(call, path);
    while (active("block_sync")) {
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (active("eio_sync")) { errno = EIO; return -1; }
    char once[PATH_MAX + 32];
    snprintf(once, sizeof once, "%s/eio_once", ctl);
    if (syscall(SYS_unlinkat, AT_FDCWD, once, 0) == 0) { errno = EIO; return -1; }
    return 0;
}

int fsync(int fd) {
    REAL(int, fsync, int);
    if (sync_fault(fd, "fsync") < 0) return -1;
    return real_fsync(fd);
}

int fdatasync(int fd) {
    REAL(int, fdatasync, int);
    if (sync_fault(fd, "fdatasync") < 0) return -1;
    return real_fdatasync(fd);
}

int sync_file_range(int fd, off_t off, off_t n, unsigned int flags) {
    REAL(int, sync_file_range, int, off_t, off_t, unsigned int);
    char path[PATH_MAX];
    if (watched(fd, path) && active("eio_sync")) { errno = EIO; return -1; }
    return real_sync_file_range(fd, off, n, flags);
}

static int trunc_fault(int fd) {
    char path[PATH_MAX];
    if (watched(fd, path) && active("eio_trunc")) { errno = EIO; return -1; }
    return 0;
}

int ftruncate(int fd, off_t len) {
    REAL(int, ftruncate, int, off_t);
    if (trunc_fault(fd) < 0) return -1;
    return real_ftruncate(fd, len);
}

int ftruncate64(int fd, off_t len) {
    REAL(int, ftruncate64, int, off_t);
    if (trunc_fault(fd) < 0) return -1;
    return real_ftruncate64(fd, len);
}

static int open_fault(const char *path) {
    if (path && under(path) && active("emfile")) { errno = EMFILE; return -1; }
    return 0;
}

#define OPEN_MODE(flags) \
    mode_t mode = 0; \
    if ((flags) & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }

int open(const char *path, int flags, ...) {
    REAL(int, open, const char *, int, ...);
    OPEN_MODE(flags);
    if (open_fault(path) < 0) return -1;
    return real_open(path, flags, mode);
}

int open64(const char *path, int flags, ...) {
    REAL(int, open64, const char *, int, ...);
    OPEN_MODE(flags);
    if (open_fault(path) < 0) return -1;
    return real_open64(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...) {
    REAL(int, openat, int, const char *, int, ...);
    OPEN_MODE(flags);
    if (open_fault(path) < 0) return -1;
    return real_openat(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...) {
    REAL(int, openat64, int, const char *, int, ...);
    OPEN_MODE(flags);
    if (open_fault(path) < 0) return -1;
    return real_openat64(dirfd, path, flags, mode);
}

int creat(const char *path, mode_t mode) {
    REAL(int, creat, const char *, mode_t);
    if (open_fault(path) < 0) return -1;
    return real_creat(path, mode);
}

int creat64(const char *path, mode_t mode) {
    REAL(int, creat64, const char *, mode_t);
    if (open_fault(path) < 0) return -1;
    return real_creat64(path, mode);
}
