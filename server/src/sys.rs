//! The few operating-system calls std does not offer, each behind a safe function; every
//! `unsafe` line of the daemon outside the plugin ABI (`plugin/ffi.rs`) is here.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Gives the heap's free memory back to the system (glibc's `malloc_trim`): glibc keeps
/// what was freed in its arenas for the next allocations, so the peak of a burst stays in
/// the daemon's RSS after the burst is over. Elsewhere (musl) nothing.
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free pages of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The daemon's effective user and group ids.
pub fn effective_ids() -> (u32, u32) {
    // SAFETY: geteuid and getegid cannot fail and touch no memory of ours.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// How long since data last moved either way on a TCP socket, as the kernel counts it
/// (`TCP_INFO`): it sees bytes a plugin moves itself (with `splice`, say) as well as ours.
/// An acknowledgement counts only while nothing of ours waits unacknowledged: a peer whose
/// window is full acknowledges the kernel's window probes (at most 120 s apart, under the
/// idle limit) without taking a byte, and such a connection would never be idle; it is
/// held to `taken`, how long since its peer last took bytes, as the caller knows it.
pub fn tcp_quiet_for(
    socket: &(impl AsRawFd + AsFd),
    taken: impl FnOnce(u64) -> Duration,
) -> io::Result<Duration> {
    let activity = tcp_activity(socket)?;
    let sent = match tcp_unacked_bytes(socket)? {
        0 => activity.since_acked,
        _ => taken(activity.bytes_acked),
    };
    Ok(activity.since_received.min(sent))
}

/// Bytes written to TCP socket `socket` that its peer has not acknowledged yet (`SIOCOUTQ`):
/// output that waits in the kernel, which the plugin no longer sees. (protocol-api's, which
/// plugins use too.)
pub fn tcp_unacked_bytes(socket: &impl AsFd) -> io::Result<usize> {
    protocol_api::output::unacked(socket.as_fd())
}

/// Bytes written to the TCP socket `socket` that the kernel holds unsent because the
/// peer's window is shut ([`protocol_api::kernel_share::unsent_behind_window`]).
pub fn tcp_unsent_bytes(socket: &impl AsFd) -> io::Result<usize> {
    protocol_api::kernel_share::unsent_behind_window(socket.as_fd())
}

/// `TCP_NOTSENT_LOWAT` at `bytes`, the socket polled once to arm its writable event
/// ([`protocol_api::kernel_share::report_writable_below`]); true when it is writable now.
pub fn set_notsent_lowat(socket: &impl AsFd, bytes: u32) -> io::Result<bool> {
    protocol_api::kernel_share::report_writable_below(socket.as_fd(), bytes)
}

/// Makes the next close of `socket` a reset (`SO_LINGER` with time 0) when output still
/// waits in its send buffer: ended for a peer that took nothing, what waits is dropped at
/// once rather than kept by the kernel (an orphaned socket, outside every limit of ours)
/// for minutes while it probes a window that never opens. True if it did.
pub fn reset_if_unsent(socket: &(impl AsRawFd + AsFd)) -> bool {
    if tcp_unacked_bytes(socket).unwrap_or(0) == 0 {
        return false;
    }
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid descriptor and a `linger` of the size passed.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    true
}

/// What moved on a TCP socket, as the kernel counts it: what the peer sent us, and what
/// it acknowledged of ours. (Not when we last sent: retransmissions to a peer that is
/// gone, and persist probes to one that takes a byte now and then, are sends too.)
#[derive(Debug, Clone, Copy)]
pub struct TcpActivity {
    /// Since the last data the peer sent us.
    pub since_received: Duration,
    /// Since the peer last acknowledged anything.
    pub since_acked: Duration,
    /// Bytes of ours the peer has acknowledged, ever: grows only when it takes data.
    pub bytes_acked: u64,
}

/// The low 32 bits of what the peer of TCP socket `socket` has acknowledged (`None` if
/// the kernel will not say): a mark that moves when it takes data.
pub fn tcp_acked(socket: &impl AsFd) -> Option<u32> {
    tcp_activity(socket)
        .ok()
        .map(|seen| seen.bytes_acked as u32)
}

/// The kernel's [`TcpActivity`] of `socket` (`TCP_INFO`).
pub fn tcp_activity(socket: &impl AsFd) -> io::Result<TcpActivity> {
    let info = protocol_api::kernel_share::tcp_info(socket.as_fd())?;
    Ok(TcpActivity {
        since_received: Duration::from_millis(u64::from(info.tcpi_last_data_recv)),
        since_acked: Duration::from_millis(u64::from(info.tcpi_last_ack_recv)),
        bytes_acked: info.tcpi_bytes_acked,
    })
}

/// Takes ownership of descriptor `fd` handed to this process at start (systemd's socket
/// activation), marked close-on-exec; `None` when it is not open.
pub fn inherited_fd(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags; -1 means it is not open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return None;
    }
    // SAFETY: an open descriptor the service manager passed us, claimed exactly once (the
    // caller removed LISTEN_FDS), with its flags as read above.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        Some(OwnedFd::from_raw_fd(fd))
    }
}

/// A private, sealed copy of `file` in memory (`memfd_create`), named `name` in
/// `/proc/PID/maps`: a library loaded from it cannot be changed under the process by
/// whoever writes the original file in place (`cp` over it truncates and rewrites the
/// inode a plain `dlopen` maps, and the process running it crashes).
pub fn sealed_copy(file: &std::fs::File, name: &str) -> io::Result<std::fs::File> {
    let name = std::ffi::CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: a NUL-terminated name and flags; the result is a new descriptor or -1.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just made, owned by nothing else.
    let mut copy = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut source = file;
    io::copy(&mut source, &mut copy)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: F_ADD_SEALS on our own memfd, which nothing has mapped writable.
    if unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(copy)
}

/// `net.ipv4.tcp_migrate_req`: whether a closing SO_REUSEPORT listener's queued connections
/// move to another listener on the port. `None` where the kernel has no such setting.
pub fn tcp_migrate_req() -> Option<bool> {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
        .ok()
        .map(|v| v.trim() != "0")
}

/// CPU time the whole process has used, user and system, every thread's (`getrusage`).
pub fn process_cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: RUSAGE_SELF always exists; `usage` is a writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return Duration::ZERO;
    }
    // SAFETY: zero-initialised, then filled by the kernel.
    let usage = unsafe { usage.assume_init() };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Asks the CPU to start bringing `bytes` of memory from `start` into its caches
/// (x86-64's `prefetcht0`, one per 64-byte line) and returns at once; elsewhere nothing.
/// A hint only: it reads nothing into the program and never faults, whatever the address.
pub fn prefetch(start: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let first = start as usize & !63;
        let end = (start as usize).saturating_add(bytes);
        for line in (first..end).step_by(64) {
            // SAFETY: a prefetch loads no value and cannot fault, at any address; SSE,
            // which it needs, is part of x86-64.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    line as *const i8,
                )
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, bytes);
}

/// CLOCK_MONOTONIC in microseconds, as systemd's `MONOTONIC_USEC` wants it.
pub fn monotonic_usec() -> u64 {
    let mut now = std::mem::MaybeUninit::<libc::timespec>::zeroed();
    // SAFETY: CLOCK_MONOTONIC always exists; `now` is a writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, now.as_mut_ptr()) };
    // SAFETY: zero-initialised, then filled by the kernel.
    let now = unsafe { now.assume_init() };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

/// Large allocations go straight back to the system when freed. glibc's malloc raises its
/// mmap threshold to the size of the largest block freed so far (up to 32 MiB), after which
/// blocks of that size come from its heaps and their memory stays with the process once
/// freed: one client's 16 MiB WebSocket message would then leave 16 MiB or more of RSS in
/// each thread's arena for good. A fixed threshold (which also stops the adjusting) keeps
/// blocks of 256 KiB and more mapped on their own, unmapped when freed; smaller ones,
/// the everyday ones, are unaffected.
pub fn return_large_blocks_to_the_system() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; called once at start, before any
    // other thread allocates.
    if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024) } != 1 {
        log::debug!("mallopt(M_MMAP_THRESHOLD) was refused; large blocks stay with glibc");
    }
}

/// Sends up to `count` bytes of `file` from `*offset` to `socket` with `sendfile`: the
/// kernel copies from the page cache, with no buffer of ours. Advances `*offset`; `Ok(0)`
/// means the file ended (it shrank since it was opened).
pub fn sendfile(
    socket: &impl AsRawFd,
    file: &std::fs::File,
    offset: &mut u64,
    count: usize,
) -> io::Result<usize> {
    let mut at =
        libc::off_t::try_from(*offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    loop {
        // SAFETY: two valid descriptors, and a pointer to a local `off_t` the kernel reads
        // and updates; nothing else of ours is touched.
        let sent = unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut at, count) };
        if sent >= 0 {
            *offset = at as u64;
            return Ok(sent as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Whether the `len` bytes of `file` from `offset` (within the file) are all in the page
/// cache, so that sending them does not wait for the disk. Asked first with `cachestat(2)`
/// (Linux 6.5), which counts the range's pages in one call; when it finds some missing,
/// or cannot say, by reading a byte of the range's first and last pages with `RWF_NOWAIT`
/// (Linux 4.14), which fails rather than wait for the disk (and starts the kernel reading
/// there); where the file system refuses that flag, by `mincore(2)` over a mapping (for
/// ranges of 64 KiB or more). The
/// first is exact but sees nothing cached through overlayfs (a container's image layers),
/// whose pages belong to the file beneath; the probes look at a range's ends only, and
/// overlayfs refuses them; the mapping sees through it. Where none
/// can say, the range passes for cached (the send may wait for the disk, as it always did).
pub fn in_page_cache(file: &std::fs::File, offset: u64, len: usize) -> bool {
    /// `cachestat` failed for want of the call itself: only the probes from then on.
    static NO_CACHESTAT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if len == 0 {
        return true;
    }
    if !NO_CACHESTAT.load(std::sync::atomic::Ordering::Relaxed) {
        match cachestat_pages(file, offset, len) {
            Ok((cached, pages)) if cached >= pages => return true,
            // Some cached, not all: exact (the probes, looking at the ends only, could be
            // fooled by a client that warmed them with one-byte ranges: a review).
            Ok((cached, _)) if cached > 0 => return false,
            // None: a cold part, or a file system whose pages it cannot see (overlayfs).
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
                NO_CACHESTAT.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Err(_) => {}
        }
    }
    /// Ranges shorter than this pass for cached where only the mapping can say: its three
    /// calls cost a small file's send a third more (measured through overlayfs, 4 KiB
    /// files), and a short range is one read from the disk at most.
    const MAPPED_FROM: usize = 64 * 1024;
    match first_and_last_cached(file, offset, len) {
        Ok(cached) => cached,
        Err(_) if len < MAPPED_FROM => true,
        Err(_) => mapped_range_cached(file, offset, len).unwrap_or(true),
    }
}

/// Whether a byte of the range's first page and of its last can be read without waiting
/// for the disk (`preadv2` with `RWF_NOWAIT`); an error where the file system cannot say
/// (overlayfs refuses the flag).
fn first_and_last_cached(file: &std::fs::File, offset: u64, len: usize) -> io::Result<bool> {
    let last = offset + len as u64 - 1;
    for at in [offset, last] {
        let mut byte = [0u8; 1];
        let iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let at =
            libc::off_t::try_from(at).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a valid descriptor and one iovec over a local byte, which the kernel
        // may fill; nothing else of ours is touched.
        let read = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, at, libc::RWF_NOWAIT) };
        if read < 0 {
            let error = io::Error::last_os_error();
            return match error.raw_os_error() {
                Some(libc::EAGAIN) => Ok(false),
                _ => Err(error),
            };
        }
    }
    Ok(true)
}

/// Whether every page of the range is cached, by `mincore(2)` over a mapping of it that
/// is never touched (so nothing is read): the way that sees through overlayfs, whose
/// mappings are of the file beneath. Three calls, so asked last.
fn mapped_range_cached(file: &std::fs::File, offset: u64, len: usize) -> io::Result<bool> {
    let page = page_size();
    let start = offset / page * page;
    let map_len = usize::try_from(offset + len as u64 - start)
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let at =
        libc::off_t::try_from(start).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a new read-only shared mapping of a valid descriptor, placed by the kernel;
    // nothing of ours is touched, and it is never read from (so no page is faulted in, and
    // a file cut shorter meanwhile cannot raise SIGBUS).
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            at,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let mut resident = vec![0u8; map_len.div_ceil(page as usize)];
    // SAFETY: the mapping just made, its length, and a vector of one byte per page of it.
    let rc = unsafe { libc::mincore(map, map_len, resident.as_mut_ptr()) };
    let error = io::Error::last_os_error();
    // SAFETY: the mapping made above, unmapped once; nothing refers to it.
    unsafe { libc::munmap(map, map_len) };
    if rc != 0 {
        return Err(error);
    }
    Ok(resident.iter().all(|&page| page & 1 != 0))
}

/// `cachestat(2)`: how many of the range's pages are cached, of how many (the range lies
/// within the file; past its end there is no page to count).
fn cachestat_pages(file: &std::fs::File, offset: u64, len: usize) -> io::Result<(u64, u64)> {
    /// The call's number, the same on every architecture with the common table; `None`
    /// elsewhere (the probes serve there).
    const SYS_CACHESTAT: Option<libc::c_long> = if cfg!(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64",
        target_arch = "loongarch64"
    )) {
        Some(451)
    } else {
        None
    };
    /// `struct cachestat_range` and `struct cachestat` of `<linux/mman.h>`.
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    let call = SYS_CACHESTAT.ok_or_else(|| io::Error::from_raw_os_error(libc::ENOSYS))?;
    let page = page_size();
    let end = offset + len as u64;
    let pages = end.div_ceil(page) - offset / page;
    let range = Range {
        off: offset,
        len: len as u64,
    };
    let mut stat = Stat::default();
    // SAFETY: a valid descriptor, a range the kernel reads and a `Stat` it writes, both
    // living across the call, and flags 0.
    let rc = unsafe {
        libc::syscall(
            call,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Stat,
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((stat.nr_cache, pages))
}

/// The system's page size.
pub fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    // SAFETY: sysconf only reads a system parameter.
    *PAGE.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        size if size > 0 => size as u64,
        _ => 4096,
    })
}

/// Opens `relative` (a path of plain names: no `..`, no `.`) under the folder `root`,
/// never leaving it, by `..` or by a symbolic link. Read-only, non-blocking, closed on
/// exec. Only a folder or a regular file is opened for reading: anything else (a FIFO, a
/// device) comes back as an `O_PATH` descriptor the caller finds is not a file, so that
/// opening it has no effect on whoever is at its other end (a FIFO's writer released).
pub fn open_beneath(root: &std::fs::File, relative: &std::path::Path) -> io::Result<std::fs::File> {
    let found = resolve_beneath(root, relative, libc::O_PATH)?;
    if !found.metadata()?.is_file() {
        return Ok(found);
    }
    resolve_beneath(root, relative, libc::O_RDONLY | libc::O_NONBLOCK)
}

/// Opens `relative` under `root` with `flags`: by `openat2(RESOLVE_BENEATH)`, where the
/// kernel refuses (`EXDEV`) any resolution that would leave the folder in one call with no
/// window between a check and the open; where it has no `openat2` (before Linux 5.6, or a
/// sandbox that forbids it), one name at a time with `O_NOFOLLOW`, so that no symbolic
/// link is followed at all (`ELOOP`, `ENOTDIR`), even one that stays inside.
fn resolve_beneath(
    root: &std::fs::File,
    relative: &std::path::Path,
    flags: libc::c_int,
) -> io::Result<std::fs::File> {
    /// `openat2` failed for want of the call itself: the walk from then on.
    static NO_OPENAT2: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if NO_OPENAT2.load(std::sync::atomic::Ordering::Relaxed) {
        return walk_beneath(root, relative, flags);
    }
    match openat2_beneath(root, relative, flags) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
            NO_OPENAT2.store(true, std::sync::atomic::Ordering::Relaxed);
            walk_beneath(root, relative, flags)
        }
        other => other,
    }
}

fn openat2_beneath(
    root: &std::fs::File,
    relative: &std::path::Path,
    flags: libc::c_int,
) -> io::Result<std::fs::File> {
    let path = c_path(relative.as_os_str())?;
    /// `struct open_how` of `openat2(2)`, version 0 (24 bytes; the kernel takes its size).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: a valid directory descriptor, a NUL-terminated path and an `open_how` that
    // live across the call, and the size of that struct; the kernel reads them only.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just made for us; nothing else owns it.
    Ok(unsafe { std::fs::File::from_raw_fd(fd as RawFd) })
}

/// [`resolve_beneath`] without `openat2`: each name opened under the one before with
/// `O_NOFOLLOW` (folders with `O_DIRECTORY`), so a folder swapped for a link mid-way is
/// refused rather than followed.
fn walk_beneath(
    root: &std::fs::File,
    relative: &std::path::Path,
    flags: libc::c_int,
) -> io::Result<std::fs::File> {
    use std::path::Component;
    let names: Vec<&std::ffi::OsStr> = relative
        .components()
        .filter(|c| *c != Component::CurDir)
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        })
        .collect::<io::Result<_>>()?;
    let Some((last, folders)) = names.split_last() else {
        return openat(root.as_raw_fd(), std::ffi::OsStr::new("."), flags);
    };
    let mut folder: Option<std::fs::File> = None;
    for name in folders {
        let at = folder.as_ref().unwrap_or(root).as_raw_fd();
        folder = Some(openat(
            at,
            name,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        )?);
    }
    let at = folder.as_ref().unwrap_or(root).as_raw_fd();
    openat(at, last, flags | libc::O_NOFOLLOW)
}

fn c_path(path: &std::ffi::OsStr) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn openat(at: RawFd, name: &std::ffi::OsStr, flags: libc::c_int) -> io::Result<std::fs::File> {
    let name = c_path(name)?;
    // SAFETY: a valid directory descriptor and a NUL-terminated name that lives across the
    // call; the kernel reads it only.
    let fd = unsafe { libc::openat(at, name.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just made for us; nothing else owns it.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::Path;

    /// A folder with a file, a sub-folder, links in and out, and a FIFO; `std::env::temp_dir`
    /// named by the test, made afresh.
    fn folder(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("switchyard-sys-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/file.txt"), "inside").unwrap();
        std::os::unix::fs::symlink("/etc", dir.join("out")).unwrap();
        std::os::unix::fs::symlink("sub", dir.join("in")).unwrap();
        let fifo = std::ffi::CString::new(dir.join("fifo").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path that lives across the call.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        dir
    }

    /// A file written to disk and dropped from the page cache is not cached; once read,
    /// it is; the three ways of asking agree. (Through overlayfs `cachestat` sees nothing
    /// cached, the probes are refused and the mapping sees right: checked by hand, as
    /// mounting one needs privileges.) (`posix_fadvise(DONTNEED)` drops clean pages no
    /// one maps, what memory pressure does; a file system that keeps everything in memory,
    /// tmpfs, has nothing to drop, so the test says so and asks nothing.)
    #[test]
    fn a_file_dropped_from_the_page_cache_is_not_cached_until_read() {
        use std::io::Write;
        let path =
            std::env::temp_dir().join(format!("switchyard-sys-cache-{}", std::process::id()));
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(&vec![7u8; 1 << 20]).unwrap();
        file.sync_all().unwrap();
        drop(file);
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a valid descriptor; the advice touches no memory of ours.
        let evict =
            || unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        evict();
        if first_and_last_cached(&file, 0, 1 << 20).unwrap_or(true) {
            eprintln!(
                "{}: the file system keeps files in memory; nothing to test",
                path.display()
            );
            std::fs::remove_file(&path).unwrap();
            return;
        }
        // (A probe that misses starts the kernel reading there: evicted again after it.)
        evict();
        assert!(!in_page_cache(&file, 0, 1 << 20));
        evict();
        assert!(!in_page_cache(&file, 4096 * 10 + 5, 300 * 1024));
        assert!(!mapped_range_cached(&file, 4096 * 10 + 5, 300 * 1024).unwrap());
        evict();
        let mut part = vec![0u8; 64 * 1024];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut part, 512 * 1024).unwrap();
        assert!(
            in_page_cache(&file, 512 * 1024 + 100, 60 * 1024),
            "the part read"
        );
        // The pages before it were not read (the kernel reads ahead, never behind).
        assert!(
            cachestat_pages(&file, 256 * 1024, 300 * 1024).is_ok_and(|(c, p)| c < p),
            "a range cached at its end only"
        );
        assert!(!mapped_range_cached(&file, 256 * 1024, 300 * 1024).unwrap());
        assert!(mapped_range_cached(&file, 512 * 1024 + 100, 60 * 1024).unwrap());
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut vec![0u8; 1 << 20], 0).unwrap();
        assert!(in_page_cache(&file, 0, 1 << 20));
        assert!(first_and_last_cached(&file, 0, 1 << 20).unwrap());
        assert!(mapped_range_cached(&file, 0, 1 << 20).unwrap());
        assert!(cachestat_pages(&file, 0, 1 << 20).is_ok_and(|(c, p)| c >= p));
        assert!(
            in_page_cache(&file, 0, 0),
            "nothing to send is never waited for"
        );
        std::fs::remove_file(&path).unwrap();
    }

    /// Without `openat2`, names are opened one at a time and no link is followed, not even
    /// one that stays inside: a folder swapped for a link mid-way is refused, not followed.
    #[test]
    fn the_walk_opens_plain_names_and_follows_no_link() {
        let dir = folder("walk");
        let root = std::fs::File::open(&dir).unwrap();
        let read = |relative: &str| {
            walk_beneath(&root, Path::new(relative), libc::O_RDONLY).map(|mut f| {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut f, &mut text).map(|_| text)
            })
        };
        assert_eq!(read("sub/file.txt").unwrap().unwrap(), "inside");
        let refused = |relative: &str| read(relative).unwrap_err().raw_os_error();
        // A link as a folder (ENOTDIR with O_DIRECTORY) or as the file itself (ELOOP).
        assert_eq!(refused("out/passwd"), Some(libc::ENOTDIR));
        assert_eq!(refused("in/file.txt"), Some(libc::ENOTDIR));
        assert_eq!(refused("in"), Some(libc::ELOOP));
        assert_eq!(refused("../etc/passwd"), Some(libc::EINVAL));
        assert!(walk_beneath(&root, Path::new("."), libc::O_PATH).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A FIFO is looked at, not opened: its writer is not released (a non-blocking open for
    /// writing still finds no reader). Before, it was opened for reading, then refused.
    #[test]
    fn a_fifo_is_not_opened_for_reading() {
        let dir = folder("fifo");
        let root = std::fs::File::open(&dir).unwrap();
        let found = open_beneath(&root, Path::new("fifo")).unwrap();
        assert!(!found.metadata().unwrap().is_file());
        let writer = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(dir.join("fifo"));
        assert_eq!(
            writer.unwrap_err().raw_os_error(),
            Some(libc::ENXIO),
            "no reader"
        );
        drop(found);
        let file = open_beneath(&root, Path::new("sub/file.txt")).unwrap();
        assert!(file.metadata().unwrap().is_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
