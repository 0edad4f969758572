//! Masking (RFC 6455 §5.3): every payload byte a client sends is XORed with the frame's
//! four-byte key, once, on the way in.
//!
//! The one `unsafe` here is the call into the AVX2 build of the loop, after the CPU was
//! asked whether it has AVX2 (and the test's calls of it); the loop itself is plain Rust
//! that the compiler vectorizes.

/// XORs `data` with the masking key (§5.3), where `offset` is how many bytes of this
/// frame's payload came before `data`.
///
/// Every byte a client sends passes through here once, so it runs 32 bytes a turn, in
/// AVX2 registers where the CPU has them: 16 KiB unmasks in about 210 ns with them against
/// 315 ns in the SSE2 every x86-64 has (a quarter of the daemon's user time in a 16 KiB echo;
/// `bench/RESULTS.md`, the twenty-sixth session).
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    #[cfg(target_arch = "x86_64")]
    if data.len() >= 64 && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: `apply_mask_avx2` needs nothing but AVX2, and the CPU has it: checked on
        // the line above (a cached answer after the first call).
        #[allow(unsafe_code)]
        unsafe {
            apply_mask_avx2(data, mask, offset)
        };
        return;
    }
    xor_with_key(data, mask, offset);
}

/// [`xor_with_key`] compiled for AVX2.
///
/// # Safety
/// The CPU must have AVX2 (`is_x86_feature_detected!("avx2")`). (An `unsafe fn` rather
/// than a safe `#[target_feature]` one, which needs Rust 1.86.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(unsafe_code)]
unsafe fn apply_mask_avx2(data: &mut [u8], mask: [u8; 4], offset: usize) {
    xor_with_key(data, mask, offset);
}

/// The masking itself, inlined into each caller so that it is compiled for the caller's
/// registers.
#[inline(always)]
fn xor_with_key(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut key = mask;
    key.rotate_left(offset % 4);
    // 32 bytes a turn against a 32-byte key, in plain byte operations on fixed-size
    // arrays: the compiler turns the inner loop into vector XORs.
    let mut wide = [0u8; 32];
    for (i, byte) in wide.iter_mut().enumerate() {
        *byte = key[i % 4];
    }
    let mut chunks = data.chunks_exact_mut(32);
    for chunk in &mut chunks {
        let chunk: &mut [u8; 32] = chunk.try_into().expect("chunks of 32");
        for (byte, k) in chunk.iter_mut().zip(wide) {
            *byte ^= k;
        }
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ways of masking (the AVX2 build where this CPU has AVX2, and the plain one)
    /// give the RFC's byte-by-byte answer (§5.3: octet i XOR key[i mod 4]) at every
    /// length around their 32-byte turns and every offset into the key.
    #[test]
    fn masking_matches_the_rfc_definition_at_every_length_and_offset() {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        #[cfg(target_arch = "x86_64")]
        let avx2 = std::arch::is_x86_feature_detected!("avx2");
        #[cfg(not(target_arch = "x86_64"))]
        let avx2 = false;
        if !avx2 {
            eprintln!("this CPU has no AVX2: only the plain masking is tested");
        }
        for len in 0..300 {
            for offset in 0..8 {
                let input: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
                let expected: Vec<u8> = (0..len)
                    .map(|i| input[i] ^ mask[(offset + i) % 4])
                    .collect();
                let mut dispatched = input.clone();
                apply_mask(&mut dispatched, mask, offset);
                assert_eq!(dispatched, expected, "length {len}, offset {offset}");
                let mut plain = input.clone();
                xor_with_key(&mut plain, mask, offset);
                assert_eq!(plain, expected, "plain, length {len}, offset {offset}");
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    let mut vector = input.clone();
                    // SAFETY: the CPU has AVX2 (asked above).
                    #[allow(unsafe_code)]
                    unsafe {
                        apply_mask_avx2(&mut vector, mask, offset)
                    };
                    assert_eq!(vector, expected, "AVX2, length {len}, offset {offset}");
                }
            }
        }
    }
}
