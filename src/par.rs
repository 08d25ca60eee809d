//! Work spread over the cores, for the places a window's opening does the
//! same thing ten thousand times: the directory target's reads and
//! switches (short syscalls on distinct directories, which the kernel runs
//! side by side) and the status files' serialization. Plain scoped threads: the
//! work is one batch at a time, on a blocking thread already.

/// Below this many items the work stays on the calling thread.
const PARALLEL_FROM: usize = 64;

/// `f` over `items` on up to one scoped thread per core (at most eight),
/// results in order. Each thread takes a contiguous run of items, so
/// neighbours (one symphony's variations, one parent dir) mostly stay on
/// one thread. A panic in `f` is resumed on the caller's thread.
pub fn map<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if threads < 2 || items.len() < PARALLEL_FROM {
        return items.into_iter().map(f).collect();
    }
    // Each chunk in a slot its thread takes, so that a chunk whose thread
    // could not be started is still there for this one to run.
    let size = items.len().div_ceil(threads);
    let mut slots: Vec<std::sync::Mutex<Option<Vec<T>>>> = Vec::with_capacity(threads);
    let mut items = items.into_iter();
    loop {
        let chunk: Vec<T> = items.by_ref().take(size).collect();
        if chunk.is_empty() {
            break;
        }
        slots.push(std::sync::Mutex::new(Some(chunk)));
    }
    let run = |k: usize| -> Vec<R> {
        let chunk = slots[k]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        chunk.unwrap_or_default().into_iter().map(&f).collect()
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..slots.len())
            .map(|k| {
                std::thread::Builder::new()
                    .name("fermata-par".into())
                    .spawn_scoped(s, move || run(k))
                    .ok()
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .flat_map(|(k, handle)| match handle {
                Some(h) => h
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                None => run(k),
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_order_whatever_the_size() {
        for n in [0, 1, PARALLEL_FROM - 1, PARALLEL_FROM, 1_000, 1_001] {
            let items: Vec<usize> = (0..n).collect();
            let got = map(items, |i| i * 2);
            assert_eq!(got, (0..n).map(|i| i * 2).collect::<Vec<_>>(), "n = {n}");
        }
    }

    #[test]
    fn a_panic_in_the_work_reaches_the_caller() {
        let caught = std::panic::catch_unwind(|| {
            map((0..1_000).collect::<Vec<usize>>(), |i| {
                assert!(i != 700, "item 700");
                i
            })
        });
        assert!(caught.is_err());
    }
}
