// ---- sinkhorn_math.wgsl: the Sinkhorn-Knopp projection of one token's N x N matrix ----
// Needs: N, NN = N * N. Matrices are row-major (row j, column i) in private arrays, indexed
// only by unrolled constants so that they stay in registers. A row or column is divided by
// multiplying with its sum's reciprocal: N divisions a step instead of NN (within an ulp of
// dividing each element).
// Normalisation step s (0-based) divides columns when s is even and rows when s is odd:
// after the softmax come `cols`, then iters - 1 pairs of (rows, cols), 2 * iters - 1 in all.

fn sk_softmax(l: ptr<function, array<f32, NN>>, eps: f32) -> array<f32, NN> {
    var p: array<f32, NN>;
#unroll j N
    {
        var mx = (*l)[{j} * N];
#unroll i N
        mx = max(mx, (*l)[{j} * N + {i}]);
#endunroll
        var s = 0.0;
#unroll i N
        p[{j} * N + {i}] = exp((*l)[{j} * N + {i}] - mx);
        s += p[{j} * N + {i}];
#endunroll
        let r = 1.0 / s;
#unroll i N
        p[{j} * N + {i}] = p[{j} * N + {i}] * r + eps;
#endunroll
    }
#endunroll
    return p;
}

// Divides each column (`cols`) or row by its sum + eps; `den` receives those divisors.
fn sk_normalise(p: ptr<function, array<f32, NN>>, cols: bool, eps: f32, den: ptr<function, array<f32, N>>) {
    if (cols) {
#unroll i N
        {
            var s = 0.0;
#unroll j N
            s += (*p)[{j} * N + {i}];
#endunroll
            let d = s + eps;
            (*den)[{i}] = d;
            let r = 1.0 / d;
#unroll j N
            (*p)[{j} * N + {i}] *= r;
#endunroll
        }
#endunroll
    } else {
#unroll j N
        {
            var s = 0.0;
#unroll i N
            s += (*p)[{j} * N + {i}];
#endunroll
            let d = s + eps;
            (*den)[{j}] = d;
            let r = 1.0 / d;
#unroll i N
            (*p)[{j} * N + {i}] *= r;
#endunroll
        }
#endunroll
    }
}

// The gradient through one normalisation, given its output q and divisors.
fn sk_normalise_back(g: ptr<function, array<f32, NN>>, q: ptr<function, array<f32, NN>>, cols: bool, den: ptr<function, array<f32, N>>) {
    if (cols) {
#unroll i N
        {
            var dot = 0.0;
#unroll j N
            dot += (*g)[{j} * N + {i}] * (*q)[{j} * N + {i}];
#endunroll
            let r = 1.0 / (*den)[{i}];
#unroll j N
            (*g)[{j} * N + {i}] = ((*g)[{j} * N + {i}] - dot) * r;
#endunroll
        }
#endunroll
    } else {
#unroll j N
        {
            var dot = 0.0;
#unroll i N
            dot += (*g)[{j} * N + {i}] * (*q)[{j} * N + {i}];
#endunroll
            let r = 1.0 / (*den)[{j}];
#unroll i N
            (*g)[{j} * N + {i}] = ((*g)[{j} * N + {i}] - dot) * r;
#endunroll
        }
#endunroll
    }
}

// Multiplies each column (`cols`) or row back by its divisor: the input of a normalisation
// from its output.
fn sk_unnormalise(p: ptr<function, array<f32, NN>>, cols: bool, den: ptr<function, array<f32, N>>) {
    if (cols) {
#unroll j N
#unroll i N
        (*p)[{j} * N + {i}] *= (*den)[{i}];
#endunroll
#endunroll
    } else {
#unroll j N
#unroll i N
        (*p)[{j} * N + {i}] *= (*den)[{j}];
#endunroll
#endunroll
    }
}

// The matrix after the softmax and the first `steps` normalisations.
fn sk_state(l: ptr<function, array<f32, NN>>, steps: u32, eps: f32) -> array<f32, NN> {
    var p = sk_softmax(l, eps);
    var den: array<f32, N>;
    for (var s = 0u; s < steps; s++) {
        sk_normalise(&p, (s & 1u) == 0u, eps, &den);
    }
    return p;
}

fn sk_forward(l: ptr<function, array<f32, NN>>, iters: u32, eps: f32) -> array<f32, NN> {
    return sk_state(l, 2u * iters - 1u, eps);
}

// Normalisation steps whose divisors the backward keeps at a time.
const SK_SEGMENT: u32 = 40u;

// d_logits from d_out. The steps are walked back in segments of SK_SEGMENT: the forward is
// recomputed to the segment's start, run through the segment keeping each step's divisors,
// and each step's output is turned back into its input by multiplying by them. With the
// default 20 iterations (39 steps) that is one segment: O(iters) work, and the only memory
// besides the token's logits and gradient is the divisors' private array.
fn sk_backward(l: ptr<function, array<f32, NN>>, d_out: ptr<function, array<f32, NN>>, iters: u32, eps: f32) -> array<f32, NN> {
    var g = *d_out;
    var dens: array<array<f32, N>, SK_SEGMENT>;
    var den: array<f32, N>;
    var hi = 2u * iters - 1u;
    while (hi > 0u) {
        let lo = select(0u, hi - SK_SEGMENT, hi > SK_SEGMENT);
        var q = sk_state(l, lo, eps);
        for (var s = lo; s < hi; s++) {
            sk_normalise(&q, (s & 1u) == 0u, eps, &den);
            dens[s - lo] = den;
        }
        for (var s = hi; s > lo; s--) {
            let cols = ((s - 1u) & 1u) == 0u;
            den = dens[s - 1u - lo];
            sk_normalise_back(&g, &q, cols, &den);
            sk_unnormalise(&q, cols, &den);
        }
        hi = lo;
    }
    // Softmax rows: S = P0 - eps.
    let p0 = sk_softmax(l, 0.0);
    var dl: array<f32, NN>;
#unroll j N
    {
        var dot = 0.0;
#unroll i N
        dot += g[{j} * N + {i}] * p0[{j} * N + {i}];
#endunroll
#unroll i N
        dl[{j} * N + {i}] = p0[{j} * N + {i}] * (g[{j} * N + {i}] - dot);
#endunroll
    }
#endunroll
    return dl;
}
