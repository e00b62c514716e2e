/* cpu.h — runtime detection of the SIMD instruction-set level this CPU (and
 * its OS) can run, and the level the kernels dispatch to.  The choice is made
 * once per process; DSINFER_ISA=scalar|avx2|avx512|neon may lower (or pick)
 * it, but never to a level the CPU lacks.  The library never prints: tools
 * report ds_cpu_isa_name() and ds_cpu_isa_note() themselves. */
#ifndef DS_CPU_H
#define DS_CPU_H

#include <stdbool.h>

typedef enum ds_isa {
    DS_ISA_SCALAR = 0,
    DS_ISA_AVX2,    /* x86-64: AVX2 + FMA + F16C, OS saves YMM state */
    DS_ISA_AVX512,  /* x86-64: AVX-512 F+BW+VL+DQ, OS saves ZMM/opmask state */
    DS_ISA_NEON,    /* aarch64: Advanced SIMD (baseline on every AArch64 CPU) */
    DS_ISA_COUNT
} ds_isa;

/* What the CPU offers, beyond the level itself. */
typedef struct ds_cpu_features {
    bool avx2;          /* AVX2 + FMA + F16C usable */
    bool avx512;        /* AVX-512 F+BW+VL+DQ usable */
    bool avx512_bf16;   /* AVX512_BF16 (vdpbf16ps) */
    bool avx512_vnni;   /* AVX512_VNNI (vpdpbusd) */
    bool avx512_vbmi;   /* AVX512_VBMI (vpermi2b) */
    bool neon;
} ds_cpu_features;

const ds_cpu_features *ds_cpu_get_features(void);
/* True when both the CPU and this build can run kernels of level isa
 * (x86 levels only in x86 builds, NEON only in aarch64 builds). */
bool ds_cpu_isa_supported(ds_isa isa);
/* The best supported level, ignoring DSINFER_ISA. */
ds_isa ds_cpu_isa_best(void);
/* The level the kernels use: DSINFER_ISA when supported, else the best. */
ds_isa ds_cpu_isa(void);
const char *ds_cpu_isa_name(void);
/* "scalar", "avx2", "avx512", "neon"; "?" when out of range. */
const char *ds_isa_name(ds_isa isa);
/* Parses a level name; -1 when unknown. */
int ds_isa_from_name(const char *name);
/* Why DSINFER_ISA was not honoured (unknown name or level the CPU lacks),
 * or NULL when it was honoured or unset.  For tools to print. */
const char *ds_cpu_isa_note(void);

#endif
