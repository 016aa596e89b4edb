/* A stand-in libhlml.so for tests: the hlml_* functions habana-pyhlml calls, with values from a text file.
 *
 * The file named by $GAUDI_FAKE_HLML_STATE is re-read whenever it changes (tests replace it between scrapes).
 * Format: one "key value" per line; "device N" starts device N's section; "#" starts a comment.
 *   global keys:  count, driver_version, hlml_version, init_error
 *   device keys:  name uuid serial bus_id minor module_id util_aip util_memory memory_total memory_used power_mw
 *                 power_limit_mw power_default_limit_mw power_min_mw power_max_mw energy_mj temperature.S
 *                 threshold.T clock.C max_clock.C throttle_reasons violation.P (reference,violation) ecc.E.C
 *                 ecc_mode (current,pending) replaced_rows.CAUSE rows_pending pcie_tx pcie_rx pcie_replays
 *                 pcie_gen pcie_width link_speed link_width link_max_speed link_max_width fit_version
 *                 fw_os_version nic_mask (lo,hi,ext_lo,ext_hi) link.PORT lost
 *   errors:       "fail SYMBOL CODE" or "fail SYMBOL.ARG CODE" (ARG = sensor, clock, port, ...), per device, or
 *                 in the global section for calls without a device.
 * A value the file does not give answers HLML_ERROR_NOT_SUPPORTED; "lost 1" answers AIP_IS_LOST for every call
 * on the device; a device at an index >= count has disappeared (its old handle answers AIP_IS_LOST).
 * Build with -DOMIT_<symbol> to leave a symbol out (an older driver), -DHLML_OLD_PCI_LAYOUT for the pre-1.19
 * struct (PCI_DOMAIN_LEN 5). It prints nothing.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_DEVICES 128
#define MAX_KEYS 512
#define KEY_LEN 64
#define VAL_LEN 96

#define SUCCESS 0
#define ERR_UNINITIALIZED 1
#define ERR_INVALID_ARGUMENT 2
#define ERR_NOT_SUPPORTED 3
#define ERR_AIP_IS_LOST 15

#ifdef HLML_OLD_PCI_LAYOUT
#define PCI_DOMAIN_LEN 5
#else
#define PCI_DOMAIN_LEN 9
#endif
#define PCI_ADDR_LEN (PCI_DOMAIN_LEN + 10)
#define PCI_LINK_INFO_LEN 10

typedef struct { char link_speed[PCI_LINK_INFO_LEN], link_width[PCI_LINK_INFO_LEN],
                 link_max_speed[PCI_LINK_INFO_LEN], link_max_width[PCI_LINK_INFO_LEN]; } pci_cap_t;
typedef struct { unsigned bus; char bus_id[PCI_ADDR_LEN]; unsigned device, domain, pci_device_id;
                 pci_cap_t caps; unsigned pci_rev, pci_subsys_id; } pci_info_t;
typedef struct { unsigned aip, memory; } utilization_t;
typedef struct { unsigned long long free, total, used; } memory_t;
typedef struct { unsigned long long reference_time, violation_time; } violation_t;
typedef struct { void *device; unsigned long long event_type; } event_data_t;

typedef struct { char key[KEY_LEN]; char val[VAL_LEN]; } kv_t;
typedef struct { int n; kv_t kv[MAX_KEYS]; } section_t;

static section_t global_sec;
static section_t devices[MAX_DEVICES];
static int n_sections;
static int initialised;
static char loaded_path[4096];
static struct stat loaded_stat;
static int handles[MAX_DEVICES]; /* a handle is &handles[i]: stable for the life of the process */

static void put(section_t *s, const char *k, const char *v) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->kv[i].key, k)) { snprintf(s->kv[i].val, VAL_LEN, "%s", v); return; }
    if (s->n >= MAX_KEYS) return;
    snprintf(s->kv[s->n].key, KEY_LEN, "%s", k);
    snprintf(s->kv[s->n].val, VAL_LEN, "%s", v);
    s->n++;
}

static void load(void) {
    const char *path = getenv("GAUDI_FAKE_HLML_STATE");
    struct stat st;
    if (!path || stat(path, &st) != 0) { global_sec.n = 0; n_sections = 0; loaded_path[0] = 0; return; }
    if (!strcmp(path, loaded_path) && st.st_ino == loaded_stat.st_ino && st.st_mtim.tv_sec == loaded_stat.st_mtim.tv_sec
        && st.st_mtim.tv_nsec == loaded_stat.st_mtim.tv_nsec && st.st_size == loaded_stat.st_size)
        return;
    FILE *f = fopen(path, "r");
    if (!f) return;
    global_sec.n = 0;
    for (int i = 0; i < MAX_DEVICES; i++) devices[i].n = 0;
    n_sections = 0;
    section_t *cur = &global_sec;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        char *hash = strchr(line, '#');
        if (hash) *hash = 0;
        char k[KEY_LEN + 8] = {0}, a[KEY_LEN + 8] = {0}, b[VAL_LEN + 8] = {0};
        int got = sscanf(line, "%70s %70s %100s", k, a, b);
        if (got < 2) continue;
        if (!strcmp(k, "device")) {
            int idx = atoi(a);
            if (idx < 0 || idx >= MAX_DEVICES) { cur = &global_sec; continue; }
            cur = &devices[idx];
            if (idx + 1 > n_sections) n_sections = idx + 1;
        } else if (!strcmp(k, "fail") && got == 3) {
            char key[KEY_LEN + 16];
            snprintf(key, sizeof key, "fail:%s", a);
            put(cur, key, b);
        } else {
            put(cur, k, a);
        }
    }
    fclose(f);
    snprintf(loaded_path, sizeof loaded_path, "%s", path);
    loaded_stat = st;
}

static const char *get(const section_t *s, const char *k) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->kv[i].key, k)) return s->kv[i].val;
    return NULL;
}

static int count(void) {
    const char *c = get(&global_sec, "count");
    return c ? atoi(c) : n_sections;
}

/* The injected error for SYMBOL (or SYMBOL.ARG when arg >= 0) in section s, else 0. */
static int injected(const section_t *s, const char *sym, long arg) {
    char key[KEY_LEN + 16];
    const char *v;
    if (arg >= 0) {
        snprintf(key, sizeof key, "fail:%s.%ld", sym, arg);
        if ((v = get(s, key))) return atoi(v);
    }
    snprintf(key, sizeof key, "fail:%s", sym);
    return (v = get(s, key)) ? atoi(v) : 0;
}

static int global_call(const char *sym) {
    load();
    if (!initialised) return ERR_UNINITIALIZED;
    return injected(&global_sec, sym, -1);
}

/* Resolve a handle: the device's section, or an error code in *rc. */
static const section_t *dev(void *h, const char *sym, long arg, int *rc) {
    load();
    *rc = SUCCESS;
    if (!initialised) { *rc = ERR_UNINITIALIZED; return NULL; }
    if (!h) { *rc = ERR_INVALID_ARGUMENT; return NULL; }
    int idx = (int)((int *)h - handles);
    if (idx < 0 || idx >= MAX_DEVICES) { *rc = ERR_INVALID_ARGUMENT; return NULL; }
    if (idx >= count()) { *rc = ERR_AIP_IS_LOST; return NULL; }
    const section_t *s = &devices[idx];
    const char *lost = get(s, "lost");
    if (lost && atoi(lost)) { *rc = ERR_AIP_IS_LOST; return NULL; }
    if ((*rc = injected(s, sym, arg))) return NULL;
    return s;
}

static int get_u64(const section_t *s, const char *k, unsigned long long *out) {
    const char *v = get(s, k);
    if (!v) return ERR_NOT_SUPPORTED;
    *out = strtoull(v, NULL, 0);
    return SUCCESS;
}

static int get_str(const section_t *s, const char *k, char *out, unsigned len) {
    const char *v = get(s, k);
    if (!v) return ERR_NOT_SUPPORTED;
    if (!out || len == 0) return ERR_INVALID_ARGUMENT;
    snprintf(out, len, "%s", v);
    return SUCCESS;
}

static int indexed_u64(const section_t *s, const char *k, long arg, unsigned long long *out) {
    char key[KEY_LEN];
    snprintf(key, sizeof key, "%s.%ld", k, arg);
    return get_u64(s, key, out);
}

#define DEV(sym, arg)                                  \
    int rc;                                            \
    const section_t *s = dev(device, sym, (arg), &rc); \
    if (!s) return rc;

#define U32_GETTER(sym, key)                                              \
    int sym(void *device, unsigned *out) {                                \
        DEV(#sym, -1)                                                     \
        unsigned long long v;                                             \
        if ((rc = get_u64(s, key, &v))) return rc;                        \
        *out = (unsigned)v;                                               \
        return SUCCESS;                                                   \
    }

#define U64_GETTER(sym, key)                                              \
    int sym(void *device, unsigned long long *out) {                      \
        DEV(#sym, -1)                                                     \
        return get_u64(s, key, out);                                      \
    }

#define STR_GETTER(sym, key)                                              \
    int sym(void *device, char *out, unsigned len) {                      \
        DEV(#sym, -1)                                                     \
        return get_str(s, key, out, len);                                 \
    }

#define INDEXED_U32_GETTER(sym, key)                                      \
    int sym(void *device, int which, unsigned *out) {                     \
        DEV(#sym, which)                                                  \
        unsigned long long v;                                             \
        if ((rc = indexed_u64(s, key, which, &v))) return rc;             \
        *out = (unsigned)v;                                               \
        return SUCCESS;                                                   \
    }

/* --- lifecycle and versions */

int hlml_init(void) {
    load();
    const char *e = get(&global_sec, "init_error");
    if (e && atoi(e)) return atoi(e);
    initialised = 1;
    return SUCCESS;
}

int hlml_init_with_flags(unsigned flags) { (void)flags; return hlml_init(); }

int hlml_shutdown(void) {
    if (!initialised) return ERR_UNINITIALIZED;
    initialised = 0;
    return SUCCESS;
}

int hlml_get_hlml_version(char *out, unsigned len) {
    int rc = global_call("hlml_get_hlml_version");
    return rc ? rc : get_str(&global_sec, "hlml_version", out, len);
}

#ifndef OMIT_hlml_get_driver_version
int hlml_get_driver_version(char *out, unsigned len) {
    int rc = global_call("hlml_get_driver_version");
    return rc ? rc : get_str(&global_sec, "driver_version", out, len);
}
#endif

#ifndef OMIT_hlml_get_nic_driver_version
int hlml_get_nic_driver_version(char *out, unsigned len) {
    int rc = global_call("hlml_get_nic_driver_version");
    return rc ? rc : get_str(&global_sec, "nic_driver_version", out, len);
}
#endif

/* --- enumeration and identity */

int hlml_device_get_count(unsigned *out) {
    int rc = global_call("hlml_device_get_count");
    if (rc) return rc;
    if (!out) return ERR_INVALID_ARGUMENT;
    *out = (unsigned)count();
    return SUCCESS;
}

int hlml_device_get_handle_by_index(unsigned index, void **out) {
    int rc = global_call("hlml_device_get_handle_by_index");
    if (rc) return rc;
    if (!out || index >= (unsigned)count() || index >= MAX_DEVICES) return ERR_INVALID_ARGUMENT;
    const char *lost = get(&devices[index], "lost");
    if (lost && atoi(lost)) return ERR_AIP_IS_LOST;
    if ((rc = injected(&devices[index], "hlml_device_get_handle_by_index", -1))) return rc;
    *out = &handles[index];
    return SUCCESS;
}

STR_GETTER(hlml_device_get_name, "name")
#ifndef OMIT_hlml_device_get_uuid
STR_GETTER(hlml_device_get_uuid, "uuid")
#endif
STR_GETTER(hlml_device_get_serial, "serial")
U32_GETTER(hlml_device_get_minor_number, "minor")
#ifndef OMIT_hlml_device_get_module_id
U32_GETTER(hlml_device_get_module_id, "module_id")
#endif
#ifndef OMIT_hlml_get_firmware_fit_version
STR_GETTER(hlml_get_firmware_fit_version, "fit_version")
#endif
#ifndef OMIT_hlml_get_fw_os_version
STR_GETTER(hlml_get_fw_os_version, "fw_os_version")
#endif

int hlml_device_get_pci_info(void *device, pci_info_t *out) {
    DEV("hlml_device_get_pci_info", -1)
    const char *bus_id = get(s, "bus_id");
    if (!bus_id) return ERR_NOT_SUPPORTED;
    memset(out, 0, sizeof *out);
    snprintf(out->bus_id, sizeof out->bus_id, "%s", bus_id);
    unsigned dom = 0, bus = 0, devno = 0, fn = 0;
    sscanf(bus_id, "%x:%x:%x.%x", &dom, &bus, &devno, &fn);
    out->domain = dom; out->bus = bus; out->device = devno;
    out->pci_device_id = 0x10611da3;
    const char *v;
    if ((v = get(s, "link_speed"))) snprintf(out->caps.link_speed, PCI_LINK_INFO_LEN, "%s", v);
    if ((v = get(s, "link_width"))) snprintf(out->caps.link_width, PCI_LINK_INFO_LEN, "%s", v);
    if ((v = get(s, "link_max_speed"))) snprintf(out->caps.link_max_speed, PCI_LINK_INFO_LEN, "%s", v);
    if ((v = get(s, "link_max_width"))) snprintf(out->caps.link_max_width, PCI_LINK_INFO_LEN, "%s", v);
    return SUCCESS;
}

/* --- utilisation, memory, power, thermal, clocks */

int hlml_device_get_utilization_rates(void *device, utilization_t *out) {
    DEV("hlml_device_get_utilization_rates", -1)
    unsigned long long aip, mem = 0;
    if ((rc = get_u64(s, "util_aip", &aip))) return rc;
    get_u64(s, "util_memory", &mem);
    out->aip = (unsigned)aip;
    out->memory = (unsigned)mem;
    return SUCCESS;
}

int hlml_device_get_memory_info(void *device, memory_t *out) {
    DEV("hlml_device_get_memory_info", -1)
    unsigned long long total, used;
    if ((rc = get_u64(s, "memory_total", &total)) || (rc = get_u64(s, "memory_used", &used))) return rc;
    out->total = total; out->used = used; out->free = total - used;
    return SUCCESS;
}

U32_GETTER(hlml_device_get_power_usage, "power_mw")
#ifndef OMIT_hlml_device_get_power_management_limit
U32_GETTER(hlml_device_get_power_management_limit, "power_limit_mw")
#endif
#ifndef OMIT_hlml_device_get_power_management_default_limit
U32_GETTER(hlml_device_get_power_management_default_limit, "power_default_limit_mw")
#endif
#ifndef OMIT_hlml_device_get_power_management_limit_constraints
int hlml_device_get_power_management_limit_constraints(void *device, unsigned *min, unsigned *max) {
    DEV("hlml_device_get_power_management_limit_constraints", -1)
    unsigned long long lo, hi;
    if ((rc = get_u64(s, "power_min_mw", &lo)) || (rc = get_u64(s, "power_max_mw", &hi))) return rc;
    *min = (unsigned)lo; *max = (unsigned)hi;
    return SUCCESS;
}
#endif
U64_GETTER(hlml_device_get_total_energy_consumption, "energy_mj")
INDEXED_U32_GETTER(hlml_device_get_temperature, "temperature")
#ifndef OMIT_hlml_device_get_temperature_threshold
INDEXED_U32_GETTER(hlml_device_get_temperature_threshold, "threshold")
#endif
INDEXED_U32_GETTER(hlml_device_get_clock_info, "clock")
#ifndef OMIT_hlml_device_get_max_clock_info
INDEXED_U32_GETTER(hlml_device_get_max_clock_info, "max_clock")
#endif
U64_GETTER(hlml_device_get_current_clocks_throttle_reasons, "throttle_reasons")

#ifndef OMIT_hlml_device_get_violation_status
int hlml_device_get_violation_status(void *device, int policy, violation_t *out) {
    DEV("hlml_device_get_violation_status", policy)
    char key[KEY_LEN];
    snprintf(key, sizeof key, "violation.%d", policy);
    const char *v = get(s, key);
    if (!v) return ERR_NOT_SUPPORTED;
    unsigned long long ref = 0, vio = 0;
    if (sscanf(v, "%llu,%llu", &ref, &vio) != 2) return ERR_INVALID_ARGUMENT;
    out->reference_time = ref; out->violation_time = vio;
    return SUCCESS;
}
#endif

/* --- ECC and row replacement */

int hlml_device_get_total_ecc_errors(void *device, int error_type, int counter_type, long long *out) {
    DEV("hlml_device_get_total_ecc_errors", error_type * 10 + counter_type)
    char key[KEY_LEN];
    snprintf(key, sizeof key, "ecc.%d.%d", error_type, counter_type);
    unsigned long long v;
    if ((rc = get_u64(s, key, &v))) return rc;
    *out = (long long)v;
    return SUCCESS;
}

#ifndef OMIT_hlml_device_get_ecc_mode
int hlml_device_get_ecc_mode(void *device, unsigned *current, unsigned *pending) {
    DEV("hlml_device_get_ecc_mode", -1)
    const char *v = get(s, "ecc_mode");
    if (!v) return ERR_NOT_SUPPORTED;
    if (sscanf(v, "%u,%u", current, pending) != 2) return ERR_INVALID_ARGUMENT;
    return SUCCESS;
}
#endif

#ifndef OMIT_hlml_device_get_replaced_rows
int hlml_device_get_replaced_rows(void *device, int cause, unsigned *row_count, void *addresses) {
    DEV("hlml_device_get_replaced_rows", cause)
    unsigned long long n;
    if ((rc = indexed_u64(s, "replaced_rows", cause, &n))) return rc;
    if (addresses) { /* six bytes per row: hbm_idx, pc, sid, bank_idx, row_addr (u16) */
        unsigned want = *row_count < n ? *row_count : (unsigned)n;
        memset(addresses, 0, (size_t)want * 6);
    }
    *row_count = (unsigned)n;
    return SUCCESS;
}
#endif

#ifndef OMIT_hlml_device_get_replaced_rows_pending_status
U32_GETTER(hlml_device_get_replaced_rows_pending_status, "rows_pending")
#endif

/* --- PCIe */

#ifndef OMIT_hlml_device_get_pcie_throughput
int hlml_device_get_pcie_throughput(void *device, int counter, unsigned *out) {
    DEV("hlml_device_get_pcie_throughput", counter)
    unsigned long long v;
    if ((rc = get_u64(s, counter == 0 ? "pcie_tx" : counter == 1 ? "pcie_rx" : "-", &v))) return rc;
    *out = (unsigned)v;
    return SUCCESS;
}
#endif
U32_GETTER(hlml_device_get_pcie_replay_counter, "pcie_replays")
#ifndef OMIT_hlml_device_get_curr_pcie_link_generation
U32_GETTER(hlml_device_get_curr_pcie_link_generation, "pcie_gen")
#endif
#ifndef OMIT_hlml_device_get_curr_pcie_link_width
U32_GETTER(hlml_device_get_curr_pcie_link_width, "pcie_width")
#endif

/* --- NIC ports */

#ifndef OMIT_hlml_get_mac_addr_info
int hlml_get_mac_addr_info(void *device, uint64_t *mask, uint64_t *ext_mask) {
    DEV("hlml_get_mac_addr_info", -1)
    const char *v = get(s, "nic_mask");
    if (!v) return ERR_NOT_SUPPORTED;
    unsigned long long a = 0, b = 0, c = 0, d = 0;
    if (sscanf(v, "%lli,%lli,%lli,%lli", &a, &b, &c, &d) != 4) return ERR_INVALID_ARGUMENT;
    mask[0] = a; mask[1] = b; ext_mask[0] = c; ext_mask[1] = d;
    return SUCCESS;
}
#endif

#ifndef OMIT_hlml_nic_get_link
int hlml_nic_get_link(void *device, uint32_t port, bool *up) {
    DEV("hlml_nic_get_link", (long)port)
    char key[KEY_LEN];
    snprintf(key, sizeof key, "link.%u", port);
    const char *v = get(s, key);
    if (!v) return ERR_INVALID_ARGUMENT; /* no such port */
    *up = atoi(v) != 0;
    return SUCCESS;
}
#endif
