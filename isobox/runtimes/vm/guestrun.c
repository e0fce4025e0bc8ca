/* isobox-run: the guest-side exec of a workload (static, in the isobox initramfs).
 *
 *   isobox-run ROOT UID GID GROUPS WORKDIR NENV K=V... -- PROG ARGS...
 *
 * chroot into ROOT, create and enter WORKDIR (Docker creates a missing one), drop to UID/GID
 * with the supplementary GROUPS ("-" for none, else comma-separated), replace the environment,
 * and execvp PROG with the workload's PATH.  Exit codes follow Docker: 127 when PROG is not
 * found, 126 when it cannot be run or the working directory cannot be entered.
 * busybox has no numeric setuid applet, so this small helper is compiled once by the host.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void mkdirs(char *path) {
    for (char *p = path + 1; *p; p++) {
        if (*p == '/') { *p = 0; mkdir(path, 0755); *p = '/'; }
    }
    mkdir(path, 0755);
}

int main(int argc, char **argv) {
    if (argc < 9) { fprintf(stderr, "usage: isobox-run ROOT UID GID GROUPS WORKDIR NENV ENV... -- PROG\n"); return 125; }
    uid_t uid = (uid_t)strtoul(argv[2], NULL, 10);
    gid_t gid = (gid_t)strtoul(argv[3], NULL, 10);
    int nenv = atoi(argv[6]);
    if (7 + nenv + 1 >= argc || strcmp(argv[7 + nenv], "--") != 0) { fprintf(stderr, "isobox-run: bad arguments\n"); return 125; }
    if (chroot(argv[1]) < 0 || chdir("/") < 0) { perror("isobox-run: chroot"); return 125; }
    char *wd = strdup(argv[5]);
    mkdirs(wd);
    gid_t groups[64];
    int ngroups = 0;
    if (strcmp(argv[4], "-") != 0) {
        for (char *tok = strtok(argv[4], ","); tok && ngroups < 64; tok = strtok(NULL, ","))
            groups[ngroups++] = (gid_t)strtoul(tok, NULL, 10);
    }
    if (setgroups(ngroups, groups) < 0 || setgid(gid) < 0 || setuid(uid) < 0) { perror("isobox-run: setuid"); return 125; }
    if (chdir(argv[5]) < 0) {
        fprintf(stderr, "chdir to cwd (\"%s\") set in config: %s\n", argv[5], strerror(errno));
        return 126;
    }
    clearenv();
    for (int i = 0; i < nenv; i++) putenv(argv[7 + i]);
    if (!getenv("PATH")) putenv("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    char **prog = argv + 8 + nenv;
    execvp(prog[0], prog);
    int err = errno;
    fprintf(stderr, "exec: \"%s\": %s\n", prog[0], err == ENOENT ? "executable file not found in $PATH" : strerror(err));
    return err == ENOENT ? 127 : 126;
}
