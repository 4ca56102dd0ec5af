/* Fast paths of the readers and image writers (loaded with ctypes by cio.py).

   Each function does one whole-array job that numpy would do in several passes over
   temporaries (a 6-Mpixel image is 50 MB per float64 temporary): the numeric text
   tables (io/text.read_table), the C program's image statistics (pipeline.image_statistics)
   and its integer and PGM images (io/smv.int_image, io/pgm.pgm_image).  Every function
   follows the numpy code it replaces value for value; where an input is out of its
   simple case (a token that is not a plain decimal number, a NaN pixel) it returns a
   negative status and the caller takes the numpy path, which also words the errors.
   Built without fast-math or FMA contraction, so each rounding is the numpy path's. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int nb_cio_abi(void) { return 1; }

/* ---------------------------------------------------------------- text tables ----- */

/* The numeric lines of a text buffer (ends with '\n').  sep[256]: separator bytes (white
   space and the table's delimiters; '\n' among them).  A line whose first non-separator
   byte is '#' is a comment.  Rows: lines with at least one token; values (maxrows x ncols)
   NaN-filled past a line's last field; lines[] 1-based line numbers; nfields[] counts.
   Returns the row count, or -1 when a token is not a plain number ([+-]digits[.digits]
   [e[+-]digits], fully consumed by strtod) or a line's field count is outside
   [minf, maxf] (maxf < 0: no upper bound): the caller re-reads the file the slow way,
   which reports the first error exactly. */
int64_t nb_parse_table(const uint8_t *buf, int64_t n, const uint8_t *sep, int32_t ncols,
                       int32_t minf, int32_t maxf, double *values, int64_t *lines,
                       int32_t *nfields, int64_t maxrows)
{
    int64_t row = 0, line = 1, i = 0;
    char tok[64];
    while (i < n) {
        /* one line: [i, eol) */
        int64_t eol = i;
        while (eol < n && buf[eol] != '\n') eol++;
        int64_t j = i;
        while (j < eol && sep[buf[j]]) j++;
        if (j < eol && buf[j] != '#') {
            if (row >= maxrows) return -1;
            double *out = values + row * (int64_t)ncols;
            for (int c = 0; c < ncols; c++) out[c] = NAN;
            int32_t count = 0;
            while (j < eol) {
                int64_t s = j;
                while (j < eol && !sep[buf[j]]) j++;
                int64_t len = j - s;
                if (len >= (int64_t)sizeof(tok)) return -1;
                int digits = 0;
                for (int64_t k = 0; k < len; k++) {
                    uint8_t ch = buf[s + k];
                    if (ch >= '0' && ch <= '9') digits++;
                    else if (!(ch == '+' || ch == '-' || ch == '.' || ch == 'e' || ch == 'E')) return -1;
                }
                if (digits == 0) return -1;
                memcpy(tok, buf + s, (size_t)len);
                tok[len] = 0;
                char *end;
                double v = strtod(tok, &end);
                if (end != tok + len) return -1;
                if (count < ncols) out[count] = v;
                count++;
                while (j < eol && sep[buf[j]]) j++;
            }
            if (count < minf || (maxf >= 0 && count > maxf)) return -1;
            lines[row] = line;
            nfields[row] = count;
            row++;
        }
        i = eol + 1;
        line++;
    }
    return row;
}

/* ------------------------------------------------------------------- images ------- */

/* The C program's statistics of a whole float image (every pixel rendered, the ROI the
   whole image), summed in double in raster order as the C sums them: out[0] max_I
   (0 when no pixel is > 0), out[1] its flat index (-1 then), out[2] mean, out[3] rms,
   out[4] rmsd.  Returns 0; -1 (nothing computed) when a pixel is not finite (the numpy
   path defines what NaN and infinities give). */
int64_t nb_image_stats(const float *img, int64_t n, double *out)
{
    double sum = 0, sumsq = 0, max_I = 0;
    int64_t imax = -1;
    for (int64_t i = 0; i < n; i++) {
        double v = (double)img[i];
        if (!isfinite(v)) return -1;
        if (imax < 0 ? v > 0 : v > max_I) { max_I = v; imax = i; }
        sum += v;
        sumsq += v * v;
    }
    double sumn = n > 0 ? (double)n : 1.0;
    double avg = sum / sumn;
    if (sumn <= 1) sumn = 2;
    double rms = sqrt(sumsq / (sumn - 1));
    double dev2 = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)img[i] - avg;
        dev2 += d * d;
    }
    double m = n > 1 ? (double)n : 2.0;
    out[0] = imax < 0 ? 0.0 : max_I;
    out[1] = (double)imax;
    out[2] = avg;
    out[3] = rms;
    out[4] = sqrt(dev2 / (m - 1));
    return 0;
}

/* gcc's (unsigned) cast of a double on x86-64: truncate into an int32 (0 outside its
   range and for NaN), keep the low bits: io/smv.c_cast_unsigned. */
static inline int32_t c_int32(double v)
{
    return (v > -2147483649.0 && v < 2147483648.0) ? (int32_t)v : 0;
}

/* io/smv.int_image inside the ROI rows [r0, r1) x columns [c0, c1) (the rest is left as
   the caller zeroed it): pixel*scale + adc in double, clipped to [0, 65535] (NaN kept),
   + 0.5, rounded to float, floorf, cast. */
void nb_int_image(const float *img, int64_t S, int64_t F, int64_t r0, int64_t r1, int64_t c0,
                  int64_t c1, double scale, double adc, uint16_t *out)
{
    (void)S;
    for (int64_t y = r0; y < r1; y++) {
        const float *src = img + y * F;
        uint16_t *dst = out + y * F;
        for (int64_t x = c0; x < c1; x++) {
            double v = (double)src[x] * scale + adc;
            if (v > 65535.0) v = 65535.0;
            if (v < 0.0) v = 0.0;
            v += 0.5;
            float r = floorf((float)v);
            dst[x] = (uint16_t)c_int32((double)r);
        }
    }
}

/* io/pgm.pgm_image inside the ROI: pixel*scale in double, clipped above at 255, cast. */
void nb_pgm_image(const float *img, int64_t S, int64_t F, int64_t r0, int64_t r1, int64_t c0,
                  int64_t c1, double scale, uint8_t *out)
{
    (void)S;
    for (int64_t y = r0; y < r1; y++) {
        const float *src = img + y * F;
        uint8_t *dst = out + y * F;
        for (int64_t x = c0; x < c1; x++) {
            double v = (double)src[x] * scale;
            if (v > 255.0) v = 255.0;
            dst[x] = (uint8_t)c_int32(v);
        }
    }
}
