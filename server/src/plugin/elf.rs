//! What a library's file must hold before it is handed to `dlopen`, pure: every loadable
//! segment (`PT_LOAD`) lies within the file. A file cut short (a copy caught half-written
//! by a reload) maps pages past its end, and the first touch of one kills the process
//! with SIGBUS; `dlopen` itself does not check.

/// Whether a 64-bit little-endian ELF file `len` bytes long, of which `file` is the start
/// (its header and program headers, which follow the header in every linker's output),
/// holds every loadable segment whole. Other formats are left to `dlopen` (`Ok`), as are
/// program headers past what `file` holds.
pub fn segments_within(file: &[u8], len: u64) -> Result<(), String> {
    const PT_LOAD: u32 = 1;
    let cut = || {
        "is cut short (written while it was read?): a loadable segment ends past the file's end"
            .to_string()
    };
    if file.len() < 64 || file[..4] != *b"\x7fELF" || file[4] != 2 || file[5] != 1 {
        return Ok(());
    }
    let u16_at = |at: usize| u16::from_le_bytes([file[at], file[at + 1]]) as u64;
    let u64_at = |at: usize| u64::from_le_bytes(file[at..at + 8].try_into().expect("8 bytes"));
    let (offset, size, count) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    let end = size
        .checked_mul(count)
        .and_then(|all| all.checked_add(offset));
    match end {
        _ if size < 56 => return Err(cut()),
        Some(end) if end <= file.len() as u64 => {}
        Some(end) if end <= len => return Ok(()), // not read: dlopen's to judge
        _ => return Err(cut()),
    }
    for index in 0..count {
        let at = (offset + index * size) as usize;
        let kind = u32::from_le_bytes(file[at..at + 4].try_into().expect("4 bytes"));
        let (start, length) = (u64_at(at + 8), u64_at(at + 32));
        if kind == PT_LOAD && start.checked_add(length).is_none_or(|end| end > len) {
            return Err(cut());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-bit ELF header and one program header: a PT_LOAD at `offset`, `length` long.
    fn elf(offset: u64, length: u64, file_len: usize) -> Vec<u8> {
        let mut file = vec![0u8; file_len.max(64 + 56)];
        file[..6].copy_from_slice(b"\x7fELF\x02\x01");
        file[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        file[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        file[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        file[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        file[72..80].copy_from_slice(&offset.to_le_bytes());
        file[96..104].copy_from_slice(&length.to_le_bytes());
        file.truncate(file_len.max(64 + 56));
        file
    }

    #[test]
    fn a_segment_past_the_end_is_a_cut_file() {
        let whole = |file: &[u8]| segments_within(file, file.len() as u64);
        assert!(whole(&elf(0, 4096, 4096)).is_ok());
        assert!(whole(&elf(0, 4097, 4096)).is_err());
        assert!(whole(&elf(u64::MAX, 2, 4096)).is_err(), "no overflow");
        // Only the start read: the segments are checked against the whole length.
        assert!(segments_within(&elf(0, 4096, 4096)[..200], 4096).is_ok());
        assert!(segments_within(&elf(0, 4096, 4096)[..200], 4000).is_err());
        // Program headers past the end.
        let mut headers_cut = elf(0, 10, 200);
        headers_cut[0x20..0x28].copy_from_slice(&190u64.to_le_bytes());
        assert!(whole(&headers_cut).is_err());
        // Not ELF64 little-endian: dlopen's to judge.
        assert!(whole(b"not a library").is_ok());
    }

    #[test]
    fn the_daemons_own_binary_is_whole_and_a_cut_one_is_not() {
        // This test binary is an ELF file of the same kind as a plugin.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let len = me.len() as u64;
        assert!(segments_within(&me[..64 * 1024], len).is_ok());
        assert!(segments_within(&me[..64 * 1024], len / 20).is_err());
    }
}
