/* Helpers shared by the libFuzzer harnesses. Each harness first does
 *   #define MAILSRV_NO_MAIN
 *   #include "../../mailsrv.c"
 * (as test/unit.c does), then includes this file. */
#ifndef FUZZ_H
#define FUZZ_H

#include <assert.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The input as a NUL-terminated string (stops at its first NUL); free() it. */
static char *
fuzz_cstr(const uint8_t *data, size_t size)
{
    char *s = xrealloc(NULL, size + 1);
    memcpy(s, data, size);
    s[size] = 0;
    return s;
}

/* One private folder per process under /dev/shm (tmpfs: fsync is cheap) or /tmp. */
static const char *
fuzz_dir(void)
{
    static char dir[64];
    if (!dir[0]) {
        strcpy(dir, "/dev/shm/mailsrv-fuzz-XXXXXX");
        if (!mkdtemp(dir)) {
            strcpy(dir, "/tmp/mailsrv-fuzz-XXXXXX");
            if (!mkdtemp(dir)) abort();
        }
    }
    return dir;
}

/* Writes a whole file (truncating it). */
static void
fuzz_write(const char *path, const void *p, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || os_write_all(fd, p, n) < 0) abort();
    close(fd);
}

/* Empties a folder (rm -r of its contents, dot files included). */
static void
fuzz_rm_tree(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[1400];
    if (!d) return;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (ms_fmt(path, sizeof path, "%s/%s", dir, e->d_name) < 0) continue;
        if (unlink(path) != 0) { fuzz_rm_tree(path); rmdir(path); }
    }
    closedir(d);
}

/* Swallows log lines. */
static void fuzz_no_log(void *user, const char *line) { (void)user; (void)line; }

#endif
