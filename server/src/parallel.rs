//! Work spread over the machine's cores, for loading many clients.

/// `f` over `items`, in order, on up to `available_parallelism()` threads,
/// each given at least `per_thread` items (fewer items, fewer threads).
pub fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    per_thread: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
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
