//! Step 1 of a download: the chunk list of the version, verified against
//! the record. Derived from the record for a one-chunk file (no lookup),
//! from a local file with the same content (a rename or copy: no
//! network), rebuilt from
//! the base list and a holder's summary (only the groups the base lacks
//! travel), or fetched whole in pages, from the holders in turn with the
//! busy backoff.

use std::time::Instant;

use dartsync_shared::chunk::summary::ListPlan;
use dartsync_shared::chunk::{ChunkParams, chunk_list_hash, chunk_list_is_well_formed, whole_file_chunk};
use dartsync_shared::limits::{MAX_PIECE_LEN, MIN_CHUNK_LEN};
use dartsync_shared::proto::p2p::{ChunkListAssembler, P2pRequest, P2pResponse};
use dartsync_shared::proto::ptp::Holder;
use dartsync_shared::{ChunkInfo, FileRecord};
use tokio_util::sync::CancellationToken;

use super::worker::{self, Conn, HolderStats};
use super::{DownloadError, Downloader, HolderError};

/// The chunk-size bound for checking received lists: the protocol maximum,
/// not the tracker's current piece length, so files chunked before a
/// piece-length change still download (the list hash is the authority).
fn list_params() -> ChunkParams {
    ChunkParams::for_piece_len(MAX_PIECE_LEN)
}

/// Checks a chunk list against the record it should describe.
pub(super) fn check_list(list: &[ChunkInfo], record: &FileRecord) -> Result<(), &'static str> {
    if chunk_list_hash(list) != record.chunks {
        return Err("its hash differs from the record's");
    }
    if !chunk_list_is_well_formed(list, record.size, list_params()) {
        return Err("it does not tile the file");
    }
    Ok(())
}

/// The chunk list of a file cut into a single chunk, derived from the
/// record alone: that chunk is the whole file, so its hash is the content
/// hash. `None` when the record's list hash says the file has more chunks
/// (or the guess does not tile the file). Saves a round trip for every
/// small file.
pub(super) fn single_chunk_list(record: &FileRecord) -> Option<Vec<ChunkInfo>> {
    let list = vec![whole_file_chunk(record.size, record.content)?];
    check_list(&list, record).is_ok().then_some(list)
}

impl Downloader {
    /// Step 1: a verified chunk list, from the local source or a holder
    /// (whose connection is returned for reuse).
    pub(super) async fn chunk_list(
        &self,
        record: &FileRecord,
        holders: &[Holder],
        base: &[ChunkInfo],
        stats: &mut [HolderStats],
        cancel: &CancellationToken,
    ) -> Result<(Vec<ChunkInfo>, Option<(usize, Conn)>), DownloadError> {
        // A one-chunk file's list follows from the record: no lookup at
        // all (most small files).
        if let Some(list) = single_chunk_list(record) {
            return Ok((list, None));
        }
        let (source, content) = (self.source.clone(), record.content);
        let local = tokio::task::spawn_blocking(move || source.chunk_list(&content)).await.ok().flatten();
        if let Some(list) = local {
            match check_list(&list, record) {
                Ok(()) => {
                    tracing::debug!(path = %record.path, "chunk list from a local file");
                    return Ok((list, None));
                }
                Err(why) => tracing::debug!(path = %record.path, why, "local chunk list does not fit the record"),
            }
        }
        // Holders answering `Busy` (upload slots full, chunk lists included)
        // are asked again after a pause, in rounds, like busy chunks.
        let limits = &self.ctx.limits;
        let (started, mut busy_streak) = (Instant::now(), 0u32);
        loop {
            let mut busy = Vec::new();
            for (i, holder) in holders.iter().enumerate() {
                if stats[i].dropped.is_some() {
                    continue;
                }
                let fetched = tokio::select! {
                    () = cancel.cancelled() => return Err(DownloadError::Cancelled { path: record.path.clone() }),
                    r = self.fetch_list(holder, record, base) => r,
                };
                match fetched {
                    Ok((list, conn)) => return Ok((list, Some((i, conn)))),
                    Err(HolderError::Busy) => {
                        stats[i].busy += 1;
                        busy.push(i);
                    }
                    Err(e) => {
                        if e.is_lie() {
                            tracing::warn!(peer = %holder.peer_id.fmt_short(), addr = %holder.addr, error = %e, "holder dropped: it sent bad data");
                        } else {
                            tracing::debug!(peer = %holder.peer_id.fmt_short(), addr = %holder.addr, error = %e, "holder dropped");
                        }
                        stats[i].dropped = Some(e);
                    }
                }
            }
            if busy.is_empty() || started.elapsed() >= limits.busy_give_up {
                for i in busy {
                    stats[i].dropped = Some(HolderError::BusyTooLong(limits.busy_give_up));
                }
                break;
            }
            let pause = limits
                .busy_backoff
                .saturating_mul(1 << busy_streak.min(16))
                .min(limits.busy_backoff_max.max(limits.busy_backoff));
            busy_streak += 1;
            tokio::select! {
                () = cancel.cancelled() => return Err(DownloadError::Cancelled { path: record.path.clone() }),
                () = tokio::time::sleep(pause) => {}
            }
        }
        let failures = stats.iter_mut().filter_map(|s| s.dropped.take().map(|e| (s.peer_id, e))).collect();
        Err(DownloadError::NoChunkList { path: record.path.clone(), failures })
    }

    /// Fetches the chunk list from one holder, rebuilt from `base` and the
    /// list's summary when `base` is long enough, else (or when that fails
    /// its check) page by page (a list of any length fits: each page is one
    /// bounded frame), and checks it.
    async fn fetch_list(
        &self,
        holder: &Holder,
        record: &FileRecord,
        base: &[ChunkInfo],
    ) -> Result<(Vec<ChunkInfo>, Conn), HolderError> {
        let limits = &self.ctx.limits;
        let mut conn = worker::gated_connect(holder, &self.ctx).await?;
        if base.len() >= limits.summary_min_base
            && let Some(list) = self.rebuild_list(&mut conn, record, base).await?
        {
            return Ok((list, conn));
        }
        let mut list = ChunkListAssembler::new(record.content, record.size);
        while !list.is_complete() {
            let request = P2pRequest::GetChunkList {
                path: record.path.clone(),
                content: record.content,
                first: list.next_index(),
                max: limits.chunk_list_page,
            };
            conn.send(&request).await.map_err(HolderError::Channel)?;
            match self.answer(&mut conn).await? {
                P2pResponse::ChunkList(page) => list.push(page).map_err(HolderError::ChunkList)?,
                P2pResponse::NotAvailable => return Err(HolderError::NotAvailable),
                P2pResponse::Busy => return Err(HolderError::Busy),
                _ => return Err(HolderError::Unexpected("not a chunk list page")),
            }
        }
        let chunks = list.finish().map_err(HolderError::ChunkList)?;
        check_list(&chunks, record).map_err(HolderError::BadChunkList)?;
        Ok((chunks, conn))
    }

    /// The next answer on `conn`, validated.
    async fn answer(&self, conn: &mut Conn) -> Result<P2pResponse, HolderError> {
        let timeout = self.ctx.limits.request_timeout;
        let response = tokio::time::timeout(timeout, conn.recv::<P2pResponse>())
            .await
            .map_err(|_| HolderError::Timeout(timeout))?
            .map_err(HolderError::Channel)?
            .ok_or(HolderError::Closed)?;
        response.validate().map_err(HolderError::Protocol)?;
        Ok(response)
    }

    /// The chunk list rebuilt from `base` and the holder's summary of it,
    /// fetching only the ranges of groups `base` lacks. `Ok(None)` (with
    /// the connection clean) when the holder has no summary for it or the
    /// rebuilt list fails its check: the caller fetches the list whole.
    async fn rebuild_list(
        &self,
        conn: &mut Conn,
        record: &FileRecord,
        base: &[ChunkInfo],
    ) -> Result<Option<Vec<ChunkInfo>>, HolderError> {
        let request = P2pRequest::GetChunkListSummary { path: record.path.clone(), content: record.content };
        conn.send(&request).await.map_err(HolderError::Channel)?;
        let summary = match self.answer(conn).await? {
            P2pResponse::ChunkListSummary(summary) if summary.content == record.content => summary,
            P2pResponse::ChunkListSummary(_) => return Err(HolderError::Unexpected("a summary of another content")),
            P2pResponse::NotAvailable => return Ok(None),
            P2pResponse::Busy => return Err(HolderError::Busy),
            _ => return Err(HolderError::Unexpected("not a chunk list summary")),
        };
        let plan = ListPlan::new(&summary, base);
        if plan.total() > record.size.div_ceil(u64::from(MIN_CHUNK_LEN)) {
            return Err(HolderError::BadChunkList("its summary claims more chunks than the file can have"));
        }
        let ranges: Vec<(u64, u32)> = plan.fetches().collect();
        let mut fetched = Vec::with_capacity(ranges.len());
        for window in ranges.chunks(self.ctx.limits.in_flight_per_holder.max(1)) {
            for &(first, max) in window {
                let request =
                    P2pRequest::GetChunkList { path: record.path.clone(), content: record.content, first, max };
                conn.send(&request).await.map_err(HolderError::Channel)?;
            }
            for &(first, max) in window {
                match self.answer(conn).await? {
                    P2pResponse::ChunkList(page)
                        if page.content == record.content
                            && page.first == first
                            && page.chunks.len() == max as usize =>
                    {
                        fetched.push(page.chunks);
                    }
                    P2pResponse::ChunkList(_) => {
                        return Err(HolderError::BadChunkList("a page other than the range asked for"));
                    }
                    P2pResponse::NotAvailable => return Err(HolderError::NotAvailable),
                    P2pResponse::Busy => return Err(HolderError::Busy),
                    _ => return Err(HolderError::Unexpected("not a chunk list page")),
                }
            }
        }
        let from_network: usize = fetched.iter().map(Vec::len).sum();
        match plan.rebuild(base, &fetched, record.size) {
            Ok(list) if check_list(&list, record).is_ok() => {
                tracing::debug!(
                    path = %record.path, chunks = list.len(), fetched = from_network, groups = summary.groups.len(),
                    "chunk list rebuilt from the base"
                );
                Ok(Some(list))
            }
            Ok(_) => {
                tracing::debug!(path = %record.path, "rebuilt chunk list fails its check; fetching it whole");
                Ok(None)
            }
            Err(e) => {
                tracing::debug!(path = %record.path, error = %e, "chunk list cannot be rebuilt; fetching it whole");
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dartsync_shared::ContentHash;

    #[test]
    fn a_one_chunk_file_needs_no_chunk_list_and_a_bigger_one_does() {
        use dartsync_shared::chunk::{ChunkParams, chunk_bytes};
        use dartsync_shared::test_util::{RecordBuilder, det_bytes};
        let params = ChunkParams::for_piece_len(64 * 1024);
        let record_of = |bytes: &[u8]| {
            let chunked = chunk_bytes(bytes, params);
            let mut record = RecordBuilder::file("f").body(bytes).build();
            record.chunks = chunked.chunks_hash;
            (record, chunked.chunks)
        };
        let (small, chunks) = record_of(&det_bytes(1, 10_000));
        assert_eq!(chunks.len(), 1);
        assert_eq!(single_chunk_list(&small), Some(chunks));
        let (big, chunks) = record_of(&det_bytes(2, 2_000_000));
        assert!(chunks.len() > 1);
        assert_eq!(single_chunk_list(&big), None);
        // A record whose list hash lies about the content is not trusted.
        let mut lying = small.clone();
        lying.content = ContentHash::of(b"other");
        assert_eq!(single_chunk_list(&lying), None);
    }
}
