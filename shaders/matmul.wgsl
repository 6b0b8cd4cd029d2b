// Tiled matmul for many tokens: each workgroup computes a (4·THREADS_M) × (4·THREADS_N) tile of Y,
// each invocation a 4×4 micro-tile, staging TILE_K-wide slices of X and W in workgroup memory.
// Any shape works: partial tiles are zero-padded in workgroup memory.

@group(0) @binding(2) var<storage, read> input: array<f32>;
@group(0) @binding(3) var<storage, read_write> output: array<f32>;

// Per-invocation micro-tile; a private array cannot be sized by an override.
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

    var acc: array<array<f32, MICRO>, MICRO>;
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
                value = weight_at((col0 + n) * in_dim + k0 + k);
            }
            w_tile[n * stride + k] = value;
        }
        workgroupBarrier();
        for (var k = 0u; k < TILE_K; k++) {
            var a: array<f32, MICRO>;
            var b: array<f32, MICRO>;
            for (var m = 0u; m < MICRO; m++) {
                a[m] = x_tile[(lid.y + m * THREADS_M) * stride + k];
                b[m] = w_tile[(lid.x + m * THREADS_N) * stride + k];
            }
            for (var m = 0u; m < MICRO; m++) {
                for (var n = 0u; n < MICRO; n++) {
                    acc[m][n] = fma(a[m], b[n], acc[m][n]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var m = 0u; m < MICRO; m++) {
        let row = row0 + lid.y + m * THREADS_M;
        for (var n = 0u; n < MICRO; n++) {
            let col = col0 + lid.x + n * THREADS_N;
            if row < params.rows && col < params.out_dim {
                store_output(row * params.out_dim + col, acc[m][n]);
            }
        }
    }
}
