/*
 * freelist.h - a bounded cache of spare fixed-size objects, for objects made
 * and dropped once per request.
 *
 * Why: such short-lived objects, malloc'd between long-lived items, fragment
 * the heap. When a request's object is freed, glibc puts its chunk in a bin,
 * and the next item malloc'd, if smaller, is carved out of it; the rest of
 * the chunk is often too small for anything that is allocated, and stays a
 * hole between two items for good. A cache hands the same objects out again
 * instead, so after warm-up they are never freed and nothing is carved out of
 * them.
 *
 * A freelist belongs to one thread. Under AddressSanitizer the cached objects
 * are poisoned, so a use after freelist_put() is still reported.
 */
#ifndef TPCKV_FREELIST_H
#define TPCKV_FREELIST_H

#include <stddef.h>

struct freelist {
    void *head;  /* cached objects, linked through their first bytes */
    size_t n;    /* objects cached */
    size_t max;  /* most objects cached; more are freed */
    size_t size; /* bytes of one object */
};

/* An empty cache of objects of size bytes (at least a pointer's size),
 * keeping at most max of them. */
void freelist_init(struct freelist *f, size_t size, size_t max);

/* A zero-filled object, cached or calloc'd; NULL if out of memory. */
void *freelist_get(struct freelist *f);

/* Gives back an object from freelist_get() (NULL is ignored): cached, or
 * freed when the cache is full. */
void freelist_put(struct freelist *f, void *p);

/* Frees every cached object. */
void freelist_clear(struct freelist *f);

#endif /* TPCKV_FREELIST_H */
