// matmul.wgsl's loads for its one-output-per-invocation kernels: straight from the
// bindings.

fn wload(i: u32) -> u32 {
    return w[i];
}

fn xload(i: u32) -> f32 {
    return x[i];
}

fn xqload(i: u32) -> u32 {
    return xq[i];
}

fn xdload(i: u32) -> f32 {
    return xd[i];
}
