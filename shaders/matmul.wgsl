// Tiled matmul for many tokens: each workgroup computes a (4·THREADS_M) × (4·THREADS_N) tile of Y,
// each invocation a 4×4 micro-tile, staging TILE_K-wide slices of X and W in workgroup memory.
// Any shape works: partial tiles are zero-padded in workgroup memory.

@group(0) @binding(2) var<storage, read> input: array<f32>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;

// Per-invocation micro-tile (4 × 4, one vec4 accumulator per row).
const MICRO: u32 = 4u;
override THREADS_N: u32 = 16u;
override THREADS_M: u32 = 16u;
override TILE_K: u32 = 16u;

// Rows padded by one element so that invocations reading different rows of a tile in the same
// step hit different banks.
var<workgroup> x_tile: array<f32, MICRO * THREADS_M * (TILE_K + 1u)>;
var<workgroup> w_tile: array<f32, MICRO * THREADS_N * (TILE_K + 1u)>;

// Grid: (ceil(out_dim / (4·THREADS_N)), ceil(rows / (4·THREADS_M))).
@compute @workgroup_size(THREADS_N, THREADS_M)
fn matmul(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tile_m = MICRO * THREADS_M;
    let tile_n = MICRO * THREADS_N;
    let stride = TILE_K + 1u;
    let row0 = wid.y * tile_m;
    let col0 = wid.x * tile_n;
    let lane = lid.y * THREADS_N + lid.x;
    let threads = THREADS_M * THREADS_N;
    let in_dim = params.in_dim;

    // One vec4 per micro-tile row (its 4 columns): named registers rather than a private array
    // indexed in loops, which some drivers place in local memory.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let xr = lid.y * stride;
    let wr = lid.x * stride;
    let x_step = THREADS_M * stride;
    let w_step = THREADS_N * stride;
    for (var k0 = 0u; k0 < in_dim; k0 += TILE_K) {
        for (var i = lane; i < tile_m * TILE_K; i += threads) {
            let r = i / TILE_K;
            let k = i % TILE_K;
            var value = 0.0;
            if row0 + r < params.rows && k0 + k < in_dim {
                value = input[(params.x_row_start + row0 + r) * in_dim + k0 + k];
            }
            x_tile[r * stride + k] = value;
        }
        for (var i = lane; i < tile_n * TILE_K; i += threads) {
            let n = i / TILE_K;
            let k = i % TILE_K;
            var value = 0.0;
            if col0 + n < params.out_dim && k0 + k < in_dim {
                value = weight_at((col0 + n) * params.weight_stride + k0 + k);
            }
            w_tile[n * stride + k] = value;
        }
        workgroupBarrier();
        for (var k = 0u; k < TILE_K; k++) {
            let b = vec4<f32>(
                w_tile[wr + k],
                w_tile[wr + w_step + k],
                w_tile[wr + 2u * w_step + k],
                w_tile[wr + 3u * w_step + k],
            );
            acc0 = fma(vec4<f32>(x_tile[xr + k]), b, acc0);
            acc1 = fma(vec4<f32>(x_tile[xr + x_step + k]), b, acc1);
            acc2 = fma(vec4<f32>(x_tile[xr + 2u * x_step + k]), b, acc2);
            acc3 = fma(vec4<f32>(x_tile[xr + 3u * x_step + k]), b, acc3);
        }
        workgroupBarrier();
    }
    store_micro_row(row0 + lid.y, col0 + lid.x, acc0);
    store_micro_row(row0 + lid.y + THREADS_M, col0 + lid.x, acc1);
    store_micro_row(row0 + lid.y + 2u * THREADS_M, col0 + lid.x, acc2);
    store_micro_row(row0 + lid.y + 3u * THREADS_M, col0 + lid.x, acc3);
}

// Stores one micro-tile row: columns col, col + THREADS_N, col + 2·THREADS_N, col + 3·THREADS_N.
fn store_micro_row(row: u32, col: u32, values: vec4<f32>) {
    if row >= params.rows {
        return;
    }
    for (var n = 0u; n < MICRO; n++) {
        let c = col + n * THREADS_N;
        if c < params.out_dim {
            store_output(output_index(row, c), values[n]);
        }
    }
}
