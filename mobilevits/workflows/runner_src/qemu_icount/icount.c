/* Instructions executed by the guest, counted by a qemu TCG plugin (user-mode qemu-aarch64 with -plugin).
 *
 * Build: gcc -O2 -shared -fPIC icount.c -o libicount.so
 * Run:   qemu-aarch64 -plugin ./libicount.so,out=/tmp/count.txt ./program
 * Writes one decimal number, the guest instructions executed, to `out` when the program exits.
 *
 * Counting: at translation each block gets a callback that adds its instruction count; a block that
 * leaves early (a fault mid-block) is counted whole, which single-threaded compute code does not do.
 * Only single-threaded guests are counted exactly (the counter is one plain integer).
 *
 * The plugin ABI is declared here rather than included, so building needs no qemu headers: these five
 * entry points and their C signatures are those of qemu's plugin API version 1 (qemu 4.2 to 8.x).
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef uint64_t plugin_id;
struct qemu_plugin_tb;                      /* opaque: a translation block */
typedef void (*tb_trans_cb)(plugin_id id, struct qemu_plugin_tb *tb);
typedef void (*vcpu_udata_cb)(unsigned int vcpu_index, void *userdata);
typedef void (*udata_cb)(plugin_id id, void *userdata);

extern void qemu_plugin_register_vcpu_tb_trans_cb(plugin_id id, tb_trans_cb cb);
extern void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, vcpu_udata_cb cb, int flags,
                                                 void *userdata);
extern size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
extern void qemu_plugin_register_atexit_cb(plugin_id id, udata_cb cb, void *userdata);

#define EXPORT __attribute__((visibility("default")))

EXPORT int qemu_plugin_version = 1;

static uint64_t executed;
static char out_path[4096];

static void on_exec(unsigned int vcpu_index, void *n_insns)
{
    (void)vcpu_index;
    executed += (uint64_t)(uintptr_t)n_insns;
}

static void on_translate(plugin_id id, struct qemu_plugin_tb *tb)
{
    (void)id;
    /* flags 0: the callback reads no guest registers */
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_exec, 0, (void *)(uintptr_t)qemu_plugin_tb_n_insns(tb));
}

static void on_exit(plugin_id id, void *userdata)
{
    (void)id;
    (void)userdata;
    FILE *f = fopen(out_path, "w");
    if (f) {
        fprintf(f, "%llu\n", (unsigned long long)executed);
        fclose(f);
    }
}

EXPORT int qemu_plugin_install(plugin_id id, const void *info, int argc, char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            strncpy(out_path, argv[i] + 4, sizeof(out_path) - 1);
        }
    }
    if (!out_path[0]) {
        fprintf(stderr, "icount plugin: give out=FILE\n");
        return 1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_exit, NULL);
    return 0;
}
