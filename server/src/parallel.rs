//! Work spread over the machine's cores, for loading many clients.

/// How many cores a job may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cores {
    /// Every one: at start, when nothing else runs yet.
    All,
    /// The caller's thread alone: a reload, beside the packet loop, which
    /// must keep a core.
    One,
}

/// `f` over `items`, in order, on up to `available_parallelism()` threads
/// (with [`Cores::All`]), each given at least `per_thread` items (fewer
/// items, fewer threads).
pub fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    cores: Cores,
    per_thread: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let available = match cores {
        Cores::All => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Cores::One => 1,
    };
    let threads = available
        .min(items.len().div_ceil(per_thread.max(1)))
        .max(1);
    if threads == 1 {
        return items.iter().map(&f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for worker in workers {
            match worker.join() {
                Ok(part) => out.extend(part),
                // A panicking worker is a bug; its panic goes on here.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}
