/* Instructions executed by the guest, counted by a qemu TCG plugin (user-mode qemu-aarch64 with -plugin).
 *
 * Build: gcc -O2 -shared -fPIC icount.c -o libicount.so
 * Run:   qemu-aarch64 -plugin ./libicount.so,out=/tmp/count.txt ./program
 * Writes one decimal number, the guest instructions executed, to `out` when the program exits.
 * With blocks=FILE it also writes, per translated block, "GUEST_VADDR INSTRUCTIONS_EXECUTED" (hex, decimal; a
 * block translated twice gives two lines) and then the emulator's own /proc/self/maps after a "maps" line, so
 * a reader can name the function each block belongs to (qemu-user maps a guest's file at guest address +
 * guest_base; the reader finds guest_base from the main program's mapping).
 *
 * Counting: at translation each block gets a callback that adds its instruction count; a block that
 * leaves early (a fault mid-block) is counted whole, which single-threaded compute code does not do.
 * Only single-threaded guests are counted exactly (the counter is one plain integer).
 *
 * The plugin ABI is declared here rather than included, so building needs no qemu headers: these six
 * entry points and their C signatures are those of qemu's plugin API version 1 (qemu 4.2 to 8.x).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
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
extern uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
extern void qemu_plugin_register_atexit_cb(plugin_id id, udata_cb cb, void *userdata);

#define EXPORT __attribute__((visibility("default")))

EXPORT int qemu_plugin_version = 1;

static uint64_t executed;
static char out_path[4096];
static char blocks_path[4096];

/* one per translation of a block (blocks=FILE only); a list, never freed: the program ends with it */
struct block {
    uint64_t vaddr, n_insns, execs;
    struct block *next;
};
static struct block *blocks;

static void on_exec(unsigned int vcpu_index, void *n_insns)
{
    (void)vcpu_index;
    executed += (uint64_t)(uintptr_t)n_insns;
}

static void on_exec_block(unsigned int vcpu_index, void *udata)
{
    struct block *b = udata;
    (void)vcpu_index;
    executed += b->n_insns;
    b->execs++;
}

static void on_translate(plugin_id id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    if (blocks_path[0]) {
        struct block *b = calloc(1, sizeof(*b));
        if (b) {
            b->vaddr = qemu_plugin_tb_vaddr(tb);
            b->n_insns = n;
            b->next = blocks;
            blocks = b;
            qemu_plugin_register_vcpu_tb_exec_cb(tb, on_exec_block, 0, b);
            return;
        }
    }
    /* flags 0: the callback reads no guest registers */
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_exec, 0, (void *)(uintptr_t)n);
}

static void write_blocks(void)
{
    FILE *f = fopen(blocks_path, "w");
    if (!f) {
        return;
    }
    for (struct block *b = blocks; b; b = b->next) {
        if (b->execs) {
            fprintf(f, "%llx %llu\n", (unsigned long long)b->vaddr, (unsigned long long)(b->n_insns * b->execs));
        }
    }
    fprintf(f, "maps\n");
    FILE *m = fopen("/proc/self/maps", "r");
    if (m) {
        char line[8192];
        while (fgets(line, sizeof(line), m)) {
            fputs(line, f);
        }
        fclose(m);
    }
    fclose(f);
}

static void at_exit(plugin_id id, void *userdata)
{
    (void)id;
    (void)userdata;
    if (blocks_path[0]) {
        write_blocks(); /* before `out`: a reader waits for `out` */
    }
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
        } else if (strncmp(argv[i], "blocks=", 7) == 0) {
            strncpy(blocks_path, argv[i] + 7, sizeof(blocks_path) - 1);
        }
    }
    if (!out_path[0]) {
        fprintf(stderr, "icount plugin: give out=FILE\n");
        return 1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
