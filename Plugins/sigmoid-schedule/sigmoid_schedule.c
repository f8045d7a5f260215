/*
 * The `sigmoid` noise schedule, written in plain C to show that the plugin ABI
 * needs nothing but diffusion_plugin.h.
 *
 * GeoDiff's sigmoid schedule (Xu et al. 2022) as diffusers' DDPMScheduler
 * computes it: beta_t = sigmoid(x_t) * (beta_end - beta_start) + beta_start with
 * x_t evenly spaced over [-6, 6]. Options: beta_start (default 0.0001) and
 * beta_end (0.02). diffusers evaluates it in float32; this is double.
 */
#include "diffusion_plugin.h"

#include <math.h>
#include <stdio.h>

static int read_number(const dfn_host *host, const dfn_options *options, const char *key, double fallback,
                       double *value, char *error, size_t error_size) {
    int found = host->option_number(options, key, value);
    if (found < 0) {
        snprintf(error, error_size, "%s must be a number", key);
        return DFN_ERROR;
    }
    if (found == 0) *value = fallback;
    return DFN_OK;
}

static int sigmoid_betas(const dfn_host *host, const dfn_options *options, int32_t count, double *betas,
                         char *error, size_t error_size) {
    double start, end;
    if (read_number(host, options, "beta_start", 0.0001, &start, error, error_size) != DFN_OK ||
        read_number(host, options, "beta_end", 0.02, &end, error, error_size) != DFN_OK) {
        return DFN_ERROR;
    }
    for (int32_t t = 0; t < count; t++) {
        double x = count == 1 ? -6.0 : -6.0 + 12.0 * (double)t / (double)(count - 1);
        betas[t] = 1.0 / (1.0 + exp(-x)) * (end - start) + start;
    }
    return DFN_OK;
}

static const dfn_schedule sigmoid_schedule = {
    .abi_version = DFN_ABI_VERSION, /* the header this file was built against */
    .size = sizeof(dfn_schedule),   /* so the host knows which fields exist */
    .name = "sigmoid",              /* the beta_schedule value that selects it */
    .summary = "GeoDiff sigmoid betas over [-6, 6], scaled into [beta_start, beta_end]",
    .betas = sigmoid_betas,         /* fills beta_0 ... beta_{count-1} */
};

static const dfn_schedule *const schedules[] = {&sigmoid_schedule};

static const dfn_plugin plugin = {
    .abi_version = DFN_ABI_VERSION, /* the host rejects a differing major or newer minor */
    .size = sizeof(dfn_plugin),     /* fields past this size are absent */
    .name = "sigmoid-schedule",     /* the library, for logs */
    .version = "1.0.0",             /* this plugin's own version */
    .schedule_count = 1,            /* entries in `schedules` */
    .schedules = schedules,         /* the noise schedules it provides */
    .sampler_count = 0,             /* it provides no samplers */
    .samplers = NULL,
    .guidance_count = 0,            /* nor guidance methods */
    .guidances = NULL,
};

__attribute__((visibility("default"))) const dfn_plugin *diffusion_plugin_init(const dfn_host *host) {
    if (DFN_ABI_MAJOR_OF(host->abi_version) != DFN_ABI_MAJOR) return NULL;
    return &plugin;
}
