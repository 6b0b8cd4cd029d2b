// 16×16×16 cooperative-matrix tiles (NVIDIA tensor cores through Vulkan) for gemm_coop.wgsl: f16
// inputs, f32 accumulators.
alias TileA = coop_mat16x16<f16, A>;
alias TileB = coop_mat16x16<f16, B>;
alias TileC = coop_mat16x16<f32, C>;
const TILE: u32 = 16u;
