/*
 * replay_main.c - runs a fuzz target once over each file named on the
 * command line, or each regular file in a directory named there (sorted,
 * so a failure names the same file every time). What libFuzzer does with
 * file arguments, for a build without libFuzzer: make fuzz-replay links it
 * with each target under gcc's ASan+UBSan, so a corpus or crash input that
 * breaks a target fails make test.
 *
 * Prints "<target>: N inputs replayed" and exits 0; a broken target aborts
 * (the sanitizers, or FUZZ_CHECK) after naming the input on stderr.
 */
#include "fuzz_util.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static size_t replayed;

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    struct stat sb;
    char *data;

    if (f == NULL || fstat(fileno(f), &sb) < 0) {
        fprintf(stderr, "replay: cannot read %s: %s\n", path, strerror(errno));
        if (f)
            fclose(f);
        return -1;
    }
    data = malloc(sb.st_size > 0 ? (size_t)sb.st_size : 1);
    if (data == NULL || fread(data, 1, (size_t)sb.st_size, f) != (size_t)sb.st_size) {
        fprintf(stderr, "replay: cannot read %s\n", path);
        free(data);
        fclose(f);
        return -1;
    }
    fclose(f);
    /* Named first, so the input that crashes is the last one on stderr. */
    fprintf(stderr, "replay: %s\n", path);
    LLVMFuzzerTestOneInput((const uint8_t *)data, (size_t)sb.st_size);
    free(data);
    replayed++;
    return 0;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int run_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char **names = NULL;
    size_t n = 0, cap = 0;
    int r = 0;

    if (d == NULL) {
        fprintf(stderr, "replay: cannot open %s: %s\n", dir, strerror(errno));
        return -1;
    }
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue; /* ., .., and .gitkeep-style placeholders */
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **p = realloc(names, cap * sizeof(*p));
            if (p == NULL)
                abort();
            names = p;
        }
        size_t len = strlen(dir) + 1 + strlen(e->d_name) + 1;
        if ((names[n] = malloc(len)) == NULL)
            abort();
        snprintf(names[n++], len, "%s/%s", dir, e->d_name);
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof(*names), cmp_names);
    for (size_t i = 0; i < n; i++) {
        struct stat sb;
        if (r == 0 && stat(names[i], &sb) == 0 && S_ISREG(sb.st_mode))
            r = run_file(names[i]);
        free(names[i]);
    }
    free(names);
    return r;
}

int main(int argc, char **argv)
{
    const char *name = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];

    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE|DIR...\n", name);
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        struct stat sb;
        if (stat(argv[i], &sb) < 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            return 1;
        }
        if ((S_ISDIR(sb.st_mode) ? run_dir(argv[i]) : run_file(argv[i])) < 0)
            return 1;
    }
    printf("%s: %zu inputs replayed\n", name, replayed);
    return 0;
}
