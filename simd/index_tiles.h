/* index_tiles.h — the layout of the lightning indexer's cached FP8 keys:
 * tiles of DS_INDEX_TILE positions, so the decode scorer loads the same
 * four dimensions of sixteen keys with one 64-byte load and converts them
 * to bf16 pairs in registers, one key per lane, with no transposes.
 *
 * A tile is [ceil(dim / 4) groups][16 keys][4 codes]: the code of
 * dimension d of the tile's key i at byte 64 (d / 4) + 4 i + d % 4.  A
 * key's row comes back out four bytes at a time.  Dimensions past dim (to
 * a multiple of 4) hold code 0 in a zeroed cache.  C and C++ (the CUDA
 * indexer reads it). */
#ifndef DS_INDEX_TILES_H
#define DS_INDEX_TILES_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define DS_INDEX_TILE 16

static inline size_t ds_index_tile_bytes(int dim) { return (size_t)64 * (size_t)((dim + 3) / 4); }

/* Bytes of tiles holding positions [0, n). */
static inline size_t ds_index_tiles_bytes(int n, int dim)
{
    return (size_t)((n + DS_INDEX_TILE - 1) / DS_INDEX_TILE) * ds_index_tile_bytes(dim);
}

/* Where the code of dimension d of position pos lives. */
static inline size_t ds_index_code_at(int pos, int dim, int d)
{
    return (size_t)(pos / DS_INDEX_TILE) * ds_index_tile_bytes(dim) + (size_t)(64 * (d / 4) + 4 * (pos % DS_INDEX_TILE) +
                                                                                d % 4);
}

/* Key pos from row[dim] into the tiles. */
static inline void ds_index_key_put(uint8_t *tiles, int dim, int pos, const uint8_t *row)
{
    uint8_t *lane = tiles + ds_index_code_at(pos, dim, 0);
    int d = 0;
    for (; d + 4 <= dim; d += 4)
        memcpy(lane + 16 * (size_t)d, row + d, 4);
    for (; d < dim; d++)
        lane[16 * (size_t)(d & ~3) + (size_t)(d & 3)] = row[d];
}

/* Keys pos .. pos + n - 1 out of the tiles into rows[n][dim]. */
static inline void ds_index_keys_get(const uint8_t *tiles, int dim, int pos, int n, uint8_t *rows)
{
    for (int j = 0; j < n; j++) {
        const uint8_t *lane = tiles + ds_index_code_at(pos + j, dim, 0);
        uint8_t *row = rows + (size_t)j * dim;
        int d = 0;
        for (; d + 4 <= dim; d += 4)
            memcpy(row + d, lane + 16 * (size_t)d, 4);
        for (; d < dim; d++)
            row[d] = lane[16 * (size_t)(d & ~3) + (size_t)(d & 3)];
    }
}

#endif
