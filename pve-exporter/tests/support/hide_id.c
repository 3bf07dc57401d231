/*
 * LD_PRELOAD shim for the tests: Debian's QEMU does not know PVE's `-id <vmid>` option.
 * Before main, swap the pointers of "-id" "<vmid>" in argv for a harmless "-msg"
 * "timestamp=off"; the strings themselves stay where they are, so /proc/<pid>/cmdline
 * still shows `-id <vmid>` as on a PVE host.
 */
#include <string.h>

static char opt[] = "-msg";
static char val[] = "timestamp=off";

/* glibc passes (argc, argv, envp) to constructors; argv is the array main gets. */
__attribute__((constructor)) static void hide_id(int argc, char **argv)
{
	for (int i = 1; i + 1 < argc; i++) {
		if (strcmp(argv[i], "-id") == 0) {
			argv[i] = opt;
			argv[i + 1] = val;
		}
	}
}
