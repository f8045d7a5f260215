// CPU affinity, which glibc declares only under _GNU_SOURCE (not visible to Swift).
#ifndef DIFFUSION_AFFINITY_H
#define DIFFUSION_AFFINITY_H

/// Writes up to `capacity` CPU numbers this process may run on; returns how many, or -1.
int dfn_allowed_cpus(int *cpus, int capacity);

/// Keeps the calling thread on `cpu`; returns 0 or -1.
int dfn_pin_current_thread(int cpu);

#endif
