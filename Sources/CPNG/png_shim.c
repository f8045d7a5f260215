// libpng behind a plain status-code interface; see png_shim.h for why.
#include "png_shim.h"

#include <errno.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct shim_error {
    char *text;
    size_t size;
};

static void on_png_error(png_structp png, png_const_charp message) {
    struct shim_error *error = png_get_error_ptr(png);
    snprintf(error->text, error->size, "libpng: %s", message);
    png_longjmp(png, 1);
}

static void on_png_warning(png_structp png, png_const_charp message) {
    (void)png;
    (void)message;
}

static int fail_errno(char *error, size_t error_size, const char *what, const char *path) {
    snprintf(error, error_size, "%s %s: %s", what, path, strerror(errno));
    return -1;
}

int dfn_png_write(const char *path, const uint8_t *pixels, uint32_t width, uint32_t height,
                  int channels, const char *const *text_keys, const char *const *text_values,
                  int text_count, int itxt_count, char *error, size_t error_size) {
    static const int color_types[5] = {-1, PNG_COLOR_TYPE_GRAY, PNG_COLOR_TYPE_GRAY_ALPHA, PNG_COLOR_TYPE_RGB,
                                       PNG_COLOR_TYPE_RGB_ALPHA};
    if (channels < 1 || channels > 4) {
        snprintf(error, error_size, "a PNG has 1 to 4 channels, not %d", channels);
        return -1;
    }
    FILE *file = fopen(path, "wb");
    if (file == NULL) return fail_errno(error, error_size, "cannot create", path);

    struct shim_error shim_error = {error, error_size};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &shim_error, on_png_error,
                                              on_png_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    png_textp texts = NULL;
    if (info == NULL) {
        snprintf(error, error_size, "libpng: out of memory");
        png_destroy_write_struct(&png, NULL);
        fclose(file);
        return -1;
    }
    if (setjmp(png_jmpbuf(png))) {
        free(texts);
        png_destroy_write_struct(&png, &info);
        fclose(file);
        return -1;
    }
    png_init_io(png, file);
    png_set_IHDR(png, info, width, height, 8, color_types[channels], PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (text_count > 0) {
        texts = calloc((size_t)text_count, sizeof(png_text));
        if (texts == NULL) png_error(png, "out of memory");
        for (int i = 0; i < text_count; i++) {
            texts[i].compression = i < itxt_count ? PNG_ITXT_COMPRESSION_NONE : PNG_TEXT_COMPRESSION_NONE;
            texts[i].key = (png_charp)text_keys[i];
            texts[i].text = (png_charp)text_values[i];
        }
        png_set_text(png, info, texts, text_count);
    }
    png_write_info(png, info);
    size_t stride = (size_t)width * (size_t)channels;
    for (uint32_t row = 0; row < height; row++) {
        png_write_row(png, pixels + (size_t)row * stride);
    }
    png_write_end(png, info);
    free(texts);
    png_destroy_write_struct(&png, &info);
    if (fclose(file) != 0) return fail_errno(error, error_size, "cannot write", path);
    return 0;
}

/// Where a read takes its bytes: a file, or a buffer in memory.
struct png_source {
    FILE *file;
    const uint8_t *bytes;
    size_t size, offset;
};

static void read_memory(png_structp png, png_bytep out, size_t count) {
    struct png_source *source = png_get_io_ptr(png);
    if (count > source->size - source->offset) png_error(png, "truncated PNG data");
    memcpy(out, source->bytes + source->offset, count);
    source->offset += count;
}

static int read_png(struct png_source *source, uint8_t *pixels, size_t capacity, uint32_t *width,
                    uint32_t *height, int *channels, char *error, size_t error_size) {
    struct shim_error shim_error = {error, error_size};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &shim_error, on_png_error,
                                             on_png_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (info == NULL) {
        snprintf(error, error_size, "libpng: out of memory");
        png_destroy_read_struct(&png, NULL, NULL);
        return -1;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        return -1;
    }
    if (source->file != NULL) {
        png_init_io(png, source->file);
    } else {
        png_set_read_fn(png, source, read_memory);
    }
    png_read_info(png, info);
    if (png_get_bit_depth(png, info) != 8 || png_get_color_type(png, info) == PNG_COLOR_TYPE_PALETTE) {
        png_error(png, "only 8-bit grey, RGB and RGBA images are read");
    }
    *width = png_get_image_width(png, info);
    *height = png_get_image_height(png, info);
    *channels = png_get_channels(png, info);
    size_t stride = (size_t)*width * (size_t)*channels;
    if (pixels != NULL) {
        if (capacity < stride * *height) png_error(png, "pixel buffer too small");
        for (uint32_t row = 0; row < *height; row++) {
            png_read_row(png, pixels + (size_t)row * stride, NULL);
        }
        png_read_end(png, NULL);
    }
    png_destroy_read_struct(&png, &info, NULL);
    return 0;
}

int dfn_png_read(const char *path, uint8_t *pixels, size_t capacity, uint32_t *width,
                 uint32_t *height, int *channels, char *error, size_t error_size) {
    FILE *file = fopen(path, "rb");
    if (file == NULL) return fail_errno(error, error_size, "cannot open", path);
    struct png_source source = {file, NULL, 0, 0};
    int status = read_png(&source, pixels, capacity, width, height, channels, error, error_size);
    fclose(file);
    return status;
}

int dfn_png_read_memory(const uint8_t *bytes, size_t size, uint8_t *pixels, size_t capacity,
                        uint32_t *width, uint32_t *height, int *channels, char *error,
                        size_t error_size) {
    struct png_source source = {NULL, bytes, size, 0};
    return read_png(&source, pixels, capacity, width, height, channels, error, error_size);
}
