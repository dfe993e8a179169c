/*
 * freelist.c - see freelist.h.
 */
#include "freelist.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

void freelist_init(struct freelist *f, size_t size, size_t max)
{
    assert(size >= sizeof(void *));
    f->head = NULL;
    f->n = 0;
    f->max = max;
    f->size = size;
}

void *freelist_get(struct freelist *f)
{
    void *p = f->head;

    if (p == NULL)
        return calloc(1, f->size);
    UNPOISON(p, f->size);
    memcpy(&f->head, p, sizeof(void *));
    f->n--;
    memset(p, 0, f->size);
    return p;
}

void freelist_put(struct freelist *f, void *p)
{
    if (p == NULL)
        return;
    if (f->n >= f->max) {
        free(p);
        return;
    }
    memcpy(p, &f->head, sizeof(void *));
    f->head = p;
    f->n++;
    POISON(p, f->size);
}

void freelist_clear(struct freelist *f)
{
    while (f->head) {
        void *p = f->head;
        UNPOISON(p, f->size);
        memcpy(&f->head, p, sizeof(void *));
        free(p);
    }
    f->n = 0;
}
