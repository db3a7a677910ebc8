/* The pandas reference's work (benchmarks/bench_prepare.py) as one compiled pass over a decompressed tar archive.
 *
 * A measurement, not part of the package: it says what a compiled `prepare` piece could reach. Like the polars
 * floor it checks nothing (a damaged or unusual archive is silently misread) and does only the reference's work:
 * stay members found by the tar headers' name, size and type fields; each line "HH:MM,Parameter,Value" read once;
 * RecordID rows dropped; hours = HH + MM / 60 kept in [0, 48]; bin = min(floor(hours), 47); the mean per
 * (stay, bin, parameter); the grid forward-filled along the bins of each stay.
 *
 * Built by `bench_prepare.py --compiled` with `gcc -O2 -shared -fPIC`, called through ctypes (which releases
 * the GIL, so two archives are gridded in two threads). Plain C99 and libc: no Python headers, no zlib.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BINS 48
#define MAX_PARAMS 64
#define NAME_LEN 32
#define SLOTS 256

/* "<digits>.txt" after the last '/', the digits as the stay id; -1 if the name is not a stay file. */
static int64_t stay_id(const char *name, size_t len) {
    size_t start = len;
    while (start > 0 && name[start - 1] != '/') start--;
    const char *base = name + start;
    size_t n = len - start;
    if (n < 5 || memcmp(base + n - 4, ".txt", 4) != 0) return -1;
    int64_t id = 0;
    for (size_t i = 0; i < n - 4; i++) {
        if (base[i] < '0' || base[i] > '9') return -1;
        id = id * 10 + (base[i] - '0');
    }
    return id;
}

static size_t octal(const unsigned char *p, size_t n) {
    size_t v = 0;
    for (size_t i = 0; i < n && p[i] >= '0' && p[i] <= '7'; i++) v = v * 8 + (p[i] - '0');
    return v;
}

/* The stay members of the tar in `tar[0:n]`: their ids, data offsets and sizes (at most `cap`); returns how many
 * there are (call with cap = 0 to count). */
long list_members(const unsigned char *tar, long n, int64_t *ids, long *offsets, long *sizes, long cap) {
    static const unsigned char zero[512];
    long found = 0, at = 0;
    while (at + 512 <= n && memcmp(tar + at, zero, 512) != 0) {
        const unsigned char *h = tar + at;
        size_t name_len = strnlen((const char *)h, 100);
        size_t size = octal(h + 124, 12);
        int64_t id = stay_id((const char *)h, name_len);
        if (id >= 0 && (h[156] == '0' || h[156] == 0)) {
            if (found < cap) {
                ids[found] = id;
                offsets[found] = at + 512;
                sizes[found] = (long)size;
            }
            found++;
        }
        at += 512 + (long)((size + 511) / 512 * 512);
    }
    return found;
}

typedef struct {
    char names[MAX_PARAMS][NAME_LEN];
    int lengths[MAX_PARAMS];
    int count;
    int slot[SLOTS]; /* parameter index + 1, 0 = empty */
} Params;

static int param_index(Params *t, const char *s, int len) {
    if (len <= 0 || len >= NAME_LEN) return -1;
    unsigned h = 2166136261u;
    for (int i = 0; i < len; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    for (unsigned k = 0; k < SLOTS; k++) {
        unsigned i = (h + k) % SLOTS;
        int p = t->slot[i] - 1;
        if (p < 0) {
            if (t->count == MAX_PARAMS) return -1;
            p = t->count++;
            memcpy(t->names[p], s, len);
            t->names[p][len] = 0;
            t->lengths[p] = len;
            t->slot[i] = p + 1;
            return p;
        }
        if (t->lengths[p] == len && memcmp(t->names[p], s, len) == 0) return p;
    }
    return -1;
}

/* Grid the `m` members (offsets, sizes from list_members) into `grid`, MAX_PARAMS x m x BINS doubles laid out
 * [parameter][stay][bin] (each parameter's column contiguous; the caller need not initialise it, and only the
 * planes of the parameters found are written). Each stay is accumulated in a small local table and written
 * once, forward-filled, NaN before its parameter's first observation. Parameter names go to `names`
 * (MAX_PARAMS x NAME_LEN chars, in first-seen order); returns how many, or -1 if there are more than MAX_PARAMS. */
int grid_members(const unsigned char *tar, const long *offsets, const long *sizes, long m, double *grid,
                 char *names) {
    Params *t = calloc(1, sizeof(Params));
    double *sum = malloc(sizeof(double) * MAX_PARAMS * BINS);
    int32_t *count = malloc(sizeof(int32_t) * MAX_PARAMS * BINS);
    if (!t || !sum || !count) { free(t); free(sum); free(count); return -1; }
    const size_t plane = (size_t)m * BINS;
    int overflow = 0;
    for (long s = 0; s < m; s++) {
        memset(sum, 0, sizeof(double) * MAX_PARAMS * BINS);
        memset(count, 0, sizeof(int32_t) * MAX_PARAMS * BINS);
        const char *p = (const char *)tar + offsets[s], *end = p + sizes[s];
        const char *nl = memchr(p, '\n', end - p); /* the header line */
        p = nl ? nl + 1 : end;
        while (p < end) {
            const char *eol = memchr(p, '\n', end - p);
            if (!eol) eol = end;
            const char *line = p;
            p = eol + 1;
            const char *c1 = memchr(line, ',', eol - line);
            if (!c1) continue;
            const char *c2 = memchr(c1 + 1, ',', eol - c1 - 1);
            if (!c2) continue;
            const char *colon = memchr(line, ':', c1 - line);
            if (!colon) continue;
            long hh = 0, mm = 0;
            for (const char *q = line; q < colon; q++) hh = hh * 10 + (*q - '0');
            for (const char *q = colon + 1; q < c1; q++) mm = mm * 10 + (*q - '0');
            double hours = (double)hh + (double)mm / 60.0;
            if (!(hours >= 0 && hours <= BINS)) continue;
            int len = (int)(c2 - c1 - 1);
            if (len == 8 && memcmp(c1 + 1, "RecordID", 8) == 0) continue;
            int before = t->count;
            int k = param_index(t, c1 + 1, len);
            if (k < 0) { overflow = 1; continue; }
            if (k == before) /* new: the stays before this one never saw it */
                for (size_t i = 0; i < (size_t)s * BINS; i++) grid[(size_t)k * plane + i] = NAN;
            char buf[64];
            int vlen = (int)(eol - c2 - 1);
            if (vlen > 0 && c2[vlen] == '\r') vlen--;
            if (vlen <= 0 || vlen >= (int)sizeof buf) continue;
            memcpy(buf, c2 + 1, vlen);
            buf[vlen] = 0;
            char *stop;
            double v = strtod(buf, &stop);
            if (stop == buf || isnan(v)) continue;
            int b = (int)floor(hours);
            if (b > BINS - 1) b = BINS - 1;
            sum[k * BINS + b] += v;
            count[k * BINS + b] += 1;
        }
        for (int k = 0; k < t->count; k++) { /* the stay's cells: means, forward-filled */
            double *col = grid + (size_t)k * plane + (size_t)s * BINS, last = NAN;
            for (int b = 0; b < BINS; b++) {
                if (count[k * BINS + b]) last = sum[k * BINS + b] / count[k * BINS + b];
                col[b] = last;
            }
        }
    }
    for (int k = 0; k < t->count; k++) memcpy(names + (size_t)k * NAME_LEN, t->names[k], NAME_LEN);
    int found = overflow ? -1 : t->count;
    free(t);
    free(sum);
    free(count);
    return found;
}
