/* index_tiles.h — the layout of the lightning indexer's cached FP8 keys:
 * tiles of DS_INDEX_TILE positions, so the decode scorer loads the same
 * two dimensions of sixteen keys with one 64-byte load and converts them
 * to bf16 pairs in registers (one key per lane), with no transposes.
 *
 * A tile holds ceil(dim / 64) chunks of 64 dimensions; a chunk, sixteen
 * 64-byte groups u; group u holds dimensions 4u .. 4u + 3 of the chunk for
 * the tile's sixteen keys i at byte 16 (i / 4) + 8 p + 2 (i % 4) + e for
 * dimension 4u + 2p + e (the order in which a byte unpack of the low and
 * high halves of each 128-bit lane yields the pair 2u, then 2u + 1).
 * Dimensions past dim hold code 0.  C and C++ (the CUDA indexer reads it). */
#ifndef DS_INDEX_TILES_H
#define DS_INDEX_TILES_H

#include <stddef.h>
#include <stdint.h>

#define DS_INDEX_TILE 16

static inline size_t ds_index_tile_bytes(int dim) { return (size_t)1024 * (size_t)((dim + 63) / 64); }

/* Bytes of tiles holding positions [0, n). */
static inline size_t ds_index_tiles_bytes(int n, int dim)
{
    return (size_t)((n + DS_INDEX_TILE - 1) / DS_INDEX_TILE) * ds_index_tile_bytes(dim);
}

/* Where the code of dimension d of position pos lives. */
static inline size_t ds_index_code_at(int pos, int dim, int d)
{
    const int i = pos % DS_INDEX_TILE, c = d / 64, r = d % 64;
    return (size_t)(pos / DS_INDEX_TILE) * ds_index_tile_bytes(dim) + (size_t)(16 * c + r / 4) * 64 +
           (size_t)(16 * (i / 4) + 8 * ((r / 2) % 2) + 2 * (i % 4) + r % 2);
}

/* Key pos from row[dim] into the tiles (the padding of its tile's chunks
 * stays as it is: 0 in a zeroed cache). */
static inline void ds_index_key_put(uint8_t *tiles, int dim, int pos, const uint8_t *row)
{
    for (int d = 0; d < dim; d++)
        tiles[ds_index_code_at(pos, dim, d)] = row[d];
}

/* Keys pos .. pos + n - 1 out of the tiles into rows[n][dim]. */
static inline void ds_index_keys_get(const uint8_t *tiles, int dim, int pos, int n, uint8_t *rows)
{
    for (int j = 0; j < n; j++)
        for (int d = 0; d < dim; d++)
            rows[(size_t)j * dim + d] = tiles[ds_index_code_at(pos + j, dim, d)];
}

#endif
