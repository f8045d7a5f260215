/*
 * diffusion_plugin.h: the whole contract between diffusiond and its plugins.
 *
 * A plugin is a shared library named libdiffusion-plugin-NAME.so that exports
 * one symbol, `diffusion_plugin_init`. The host calls it once with its table of
 * functions (dfn_host) and the plugin returns a descriptor (dfn_plugin) listing
 * the components it provides: noise schedules, samplers and guidance methods. A plugin includes only this header; it links
 * neither the kernel runtime nor the daemon, so it may be written in C.
 *
 * Rules, in the manner of SQLite's sqlite3ext.h:
 *  - Every struct starts with `abi_version` and `size`; structs only ever grow
 *    at the end, so a newer reader of an older struct checks `size` before it
 *    touches a field added later.
 *  - The host rejects a struct whose ABI major differs from its own or whose
 *    minor is newer, or whose `size` is smaller than its minor defines; it
 *    never reads a field past `size`. A plugin may refuse a host in the same
 *    way (return NULL).
 *  - Every function slot is required unless its comment says it may be NULL;
 *    the host refuses a component with a required slot NULL, naming the slot.
 *  - Strings and tables a plugin returns stay valid for the life of the process:
 *    the host never calls dlclose.
 *  - A component instance is created per job and called from one thread at a
 *    time; different instances may run on different threads at once.
 *  - Fallible calls return DFN_OK or DFN_ERROR; on DFN_ERROR they have written
 *    a one-line, NUL-terminated reason into `error` (at most `error_size` bytes).
 */
#ifndef DIFFUSION_PLUGIN_H
#define DIFFUSION_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DFN_ABI_MAJOR 1
#define DFN_ABI_MINOR 1
#define DFN_ABI_VERSION ((uint32_t)((DFN_ABI_MAJOR << 16) | DFN_ABI_MINOR))
#define DFN_ABI_MAJOR_OF(version) ((uint32_t)(version) >> 16)
#define DFN_ABI_MINOR_OF(version) ((uint32_t)(version)&0xffffu)

/* The symbol every plugin library exports, and its type. */
#define DFN_PLUGIN_ENTRY "diffusion_plugin_init"
struct dfn_host;
struct dfn_plugin;
typedef const struct dfn_plugin *(*dfn_plugin_init_fn)(const struct dfn_host *host);

enum { DFN_OK = 0, DFN_ERROR = -1 };
enum { DFN_LOG_DEBUG = 0, DFN_LOG_INFO = 1, DFN_LOG_WARNING = 2, DFN_LOG_ERROR = 3 };

/* A component's settings (from the model's scheduler config and the job),
 * read through the host's option_* functions during `create` only (the
 * handle is not valid afterwards). The host rejects keys no component read,
 * so a misspelt setting is an error, never ignored. */
typedef struct dfn_options dfn_options;

/* One image's random stream (the job's generator for that image). */
typedef struct dfn_generator dfn_generator;

/* ---- What the host gives every plugin ------------------------------------ */

typedef struct dfn_host {
    uint32_t abi_version; /* DFN_ABI_VERSION of the host */
    uint32_t size;        /* sizeof(dfn_host) as the host was built */

    /* Writes one line to the host's log, attributed to `component`. */
    void (*log)(int level, const char *component, const char *message);

    /* Option lookups return 1 when the key is present with that type, 0 when it
     * is absent (or JSON null), and -1 when it has another type (an error the
     * host reports itself). `option_string`'s result lives as long as the options. */
    int (*option_number)(const dfn_options *options, const char *key, double *value);
    int (*option_bool)(const dfn_options *options, const char *key, int *value);
    int (*option_string)(const dfn_options *options, const char *key, const char **value);
    /* A list of numbers: returns its length (writing at most `capacity` values),
     * 0 when absent, -1 when not a list of numbers. */
    int64_t (*option_numbers)(const dfn_options *options, const char *key, double *values, int64_t capacity);

    /* Vector arithmetic of the kernel runtime, on `count` floats. */
    void (*axpby)(int64_t count, float a, const float *x, float b, float *y); /* y = a*x + b*y */
    void (*clamp)(int64_t count, float low, float high, float *x);
    /* The q-quantile of |x|, interpolated linearly as torch.quantile does. */
    float (*abs_quantile)(int64_t count, const float *x, double q);

    /* Standard normal floats from one image's generator. */
    void (*random_normal)(dfn_generator *generator, int64_t count, float *out);

    /* ∇_x log p(y | x_t) of the model's noisy classifier for `images` images of
     * `image_size` floats at `timestep`, one label each, into `gradient`.
     * `classifier` is the handle a guidance step receives (dfn_guidance_inputs). */
    int (*classifier_gradient)(void *classifier, int32_t images, int64_t image_size, const float *sample,
                               int32_t timestep, const int32_t *labels, float *gradient, char *error,
                               size_t error_size);
} dfn_host;

/* ---- Noise schedules ------------------------------------------------------ */

/* A beta schedule (diffusers' `beta_schedule`): beta_t for t = 0 ... count-1. */
typedef struct dfn_schedule {
    uint32_t abi_version;
    uint32_t size;
    const char *name;    /* as in scheduler_config.json, e.g. "linear" */
    const char *summary; /* one line for `diffctl plugins` */
    /* Options it may read: beta_start, beta_end (and its own). */
    int (*betas)(const dfn_host *host, const dfn_options *options, int32_t count, double *betas,
                 char *error, size_t error_size);
} dfn_schedule;

/* ---- Samplers ------------------------------------------------------------- */

/* The training-time noise levels a sampler works on; owned by the host and
 * valid for the life of the sampler instance made with it. */
typedef struct dfn_noise_levels {
    uint32_t abi_version;
    uint32_t size;
    int32_t train_steps;          /* num_train_timesteps */
    const double *betas;          /* [train_steps] */
    const double *alphas_cumprod; /* [train_steps], the product of (1 - beta) up to t */
} dfn_noise_levels;

/* One model evaluation a sampler asks for (ABI 1.1). The host fills
 * `abi_version` and `size` (its own, never smaller than the sampler's minor
 * defines); the sampler's `describe` writes the rest. */
typedef struct dfn_evaluation {
    uint32_t abi_version;
    uint32_t size;
    int32_t step;         /* the inference step it belongs to: progress and previews count steps */
    double time;          /* the model's time input: a timestep (fractional where sigmas are
                             interpolated) or, for samplers of models that take it, σ itself */
    double alpha_cumprod; /* ᾱ of the noise in the model's input, for guidance and for models
                             that read it; 1/(1+σ²) for samplers that work in σ */
    double input_scale;   /* diffusers' scale_model_input: the model sees input_scale · x */
    int32_t model_variance; /* 1: `step` reads the model's predicted variance too: each image's
                               model_output is 2 · image_size floats, the (guided) output then the
                               conditional pass's variance channels, as diffusers splits a model
                               of out_channels = 2 · in_channels. 0: the host drops them. */
} dfn_evaluation;

/* A sampler (what diffusers calls a scheduler). The host drives the loop, as
 * diffusers pipelines do: set_timesteps once, then for each model evaluation
 * it chose, in order: the model on input_scale · x, guidance, and step.
 * Under ABI 1.0 every step is one evaluation at timesteps[i] (ᾱ from the noise
 * levels, scale 1, x_T unit noise); ABI 1.1 samplers describe each evaluation,
 * so a step may evaluate the model more than once (Heun, a corrector) and
 * sample in σ rather than t. */
typedef struct dfn_sampler {
    uint32_t abi_version;
    uint32_t size;
    const char *name;    /* e.g. "ddim" */
    const char *summary; /* one line for `diffctl plugins` */

    /* A configured instance, or NULL with a reason. */
    void *(*create)(const dfn_host *host, const dfn_options *options, const dfn_noise_levels *levels,
                    char *error, size_t error_size);
    void (*destroy)(void *instance);

    /* Plans `steps` inference steps and returns the number of model
     * evaluations they take (1.0: one per step), writing each one's timestep
     * (rounded where fractional; `describe` gives the exact value) into
     * `timesteps`, at most `capacity` of them; -1 on error. Under 1.1, with
     * `timesteps` NULL it only returns the count, so the host can size it. */
    int32_t (*set_timesteps)(void *instance, int32_t steps, int32_t *timesteps, int32_t capacity,
                             char *error, size_t error_size);

    /* Consumes model evaluation `index` for `images` images of `image_size`
     * floats each, stored one after another: reads the (guided) model output
     * and the current sample x, writes the next sample into `previous` and,
     * when not NULL, the predicted x_0 into `predicted_original`.
     * `generators[i]` is image i's random stream. */
    int (*step)(void *instance, int32_t index, int32_t images, int64_t image_size, const float *model_output,
                const float *sample, float *previous, float *predicted_original, dfn_generator *const *generators,
                char *error, size_t error_size);

    /* Saves the instance's state (what set_timesteps and earlier steps left:
     * histories of model outputs, a half-finished step) as a blob of at most
     * `capacity` bytes, returning its size; with `blob` NULL, returns the size
     * needed. The blob starts with the sampler's own state version, so
     * restore can refuse a blob it does not know. Restoring the blob saved
     * after evaluation k must make evaluation k+1 bit-identical. */
    int64_t (*save_state)(void *instance, void *blob, int64_t capacity);
    int (*restore_state)(void *instance, const void *blob, int64_t size, char *error, size_t error_size);

    /* ---- ABI 1.1 ---- */

    /* The diffusers scheduler classes (scheduler_config.json `_class_name`)
     * it implements, NULL-terminated: a model whose config names one renders
     * with this sampler by default (a class another sampler declared first
     * stays with that one, and the host logs the clash). May be NULL. */
    const char *const *diffusers_classes;
    /* Describes model evaluation `index` of those set_timesteps planned. */
    int (*describe)(void *instance, int32_t index, dfn_evaluation *evaluation, char *error, size_t error_size);
    /* diffusers' init_noise_sigma, valid after set_timesteps: x_T is this
     * times each image's unit-variance noise. */
    double (*init_noise_sigma)(void *instance);
} dfn_sampler;

/* ---- Guidance ------------------------------------------------------------ */

/* Which model evaluations a guidance method combines (a bit set). */
enum {
    DFN_NEEDS_CONDITIONAL = 1,   /* the model's output for each image's label */
    DFN_NEEDS_UNCONDITIONAL = 2, /* the model's output for the null label */
    DFN_NEEDS_CLASSIFIER = 4     /* the noisy classifier's gradient (host->classifier_gradient) */
};

/* One step's inputs to a guidance method; arrays hold `images` images of
 * `image_size` floats one after another, and a model output the method did not
 * ask for is NULL. */
typedef struct dfn_guidance_inputs {
    uint32_t abi_version;
    uint32_t size;
    int32_t images;
    int64_t image_size;
    int32_t timestep;          /* the evaluation's time input, rounded to a whole timestep */
    double alpha_cumprod;      /* ᾱ of the noise in `sample` (the evaluation's) */
    const float *sample;       /* x_t as the model sees it (after scale_model_input) */
    const float *conditional;  /* model output with each image's label */
    const float *unconditional; /* model output with the null label */
    const int32_t *labels;     /* each image's label */
    void *classifier;          /* for host->classifier_gradient; NULL when the model has none */
} dfn_guidance_inputs;

/* A guidance method: turns the model outputs of one step into the output the
 * sampler steps with. */
typedef struct dfn_guidance {
    uint32_t abi_version;
    uint32_t size;
    const char *name;    /* the job's guidance "kind", e.g. "cfg" */
    const char *summary; /* one line for `diffctl plugins` */
    void *(*create)(const dfn_host *host, const dfn_options *options, char *error, size_t error_size);
    void (*destroy)(void *instance);
    /* The DFN_NEEDS_* evaluations `combine` reads. */
    uint32_t (*needs)(void *instance);
    int (*combine)(void *instance, const dfn_guidance_inputs *inputs, float *guided, char *error, size_t error_size);
    /* State for resuming, as dfn_sampler's; both NULL for a method without state. */
    int64_t (*save_state)(void *instance, void *blob, int64_t capacity);
    int (*restore_state)(void *instance, const void *blob, int64_t size, char *error, size_t error_size);
} dfn_guidance;

/* ---- The plugin descriptor ------------------------------------------------ */

typedef struct dfn_plugin {
    uint32_t abi_version; /* DFN_ABI_VERSION the plugin was built against */
    uint32_t size;        /* sizeof(dfn_plugin) as the plugin was built */
    const char *name;     /* the library's name, e.g. "schedules" */
    const char *version;  /* the plugin's own version, for logs and checkpoints */
    int32_t schedule_count;
    const dfn_schedule *const *schedules;
    int32_t sampler_count;
    const dfn_sampler *const *samplers;
    int32_t guidance_count;
    const dfn_guidance *const *guidances;
} dfn_plugin;

#ifdef __cplusplus
}
#endif
#endif
