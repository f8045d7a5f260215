// A setjmp-free face for libpng.
//
// libpng reports errors by longjmp; a longjmp across Swift frames is undefined
// behaviour, so every libpng call happens inside this file, under its own
// setjmp, and failures come back as a status code and a message.
#ifndef DIFFUSION_PNG_SHIM_H
#define DIFFUSION_PNG_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Writes an 8-bit PNG of `channels` 1 (grey), 2 (grey+alpha), 3 (RGB) or 4
/// (RGBA) interleaved samples, rows top to bottom, with `text_count` text chunks:
/// the first `itxt_count` as iTXt (UTF-8), the rest as tEXt (Latin-1, the chunk
/// tools such as AUTOMATIC1111's read generation parameters from).
/// Returns 0, or -1 with a message in `error` (always NUL-terminated).
int dfn_png_write(const char *path, const uint8_t *pixels, uint32_t width, uint32_t height,
                  int channels, const char *const *text_keys, const char *const *text_values,
                  int text_count, int itxt_count, char *error, size_t error_size);

/// Reads an 8-bit PNG without palette. Pass `pixels` NULL to learn the size:
/// `*width`, `*height` and `*channels` are set and 0 is returned. With a buffer of
/// `capacity` bytes (at least width*height*channels) the samples are read into it.
int dfn_png_read(const char *path, uint8_t *pixels, size_t capacity, uint32_t *width,
                 uint32_t *height, int *channels, char *error, size_t error_size);

/// `dfn_png_read` of a PNG file's `size` bytes in memory.
int dfn_png_read_memory(const uint8_t *bytes, size_t size, uint8_t *pixels, size_t capacity,
                        uint32_t *width, uint32_t *height, int *channels, char *error,
                        size_t error_size);

#ifdef __cplusplus
}
#endif
#endif
