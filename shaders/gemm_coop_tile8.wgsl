// 8×8×8 cooperative-matrix tiles (lavapipe, Apple GPUs' simdgroup matrices through Metal, some
// AMD GPUs) for gemm_coop.wgsl: f16 inputs, f32 accumulators.
alias TileA = coop_mat8x8<f16, A>;
alias TileB = coop_mat8x8<f16, B>;
alias TileC = coop_mat8x8<f32, C>;
const TILE: u32 = 8u;
