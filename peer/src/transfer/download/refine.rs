//! Between the local copies and the network phase of a download: fetch
//! only the changed parts of chunks that replace chunks this peer has.
//!
//! A small edit of a big file changes one chunk (256 KiB on average); the
//! receiver has the chunk it replaces, in its base version. The base
//! chunks the new list no longer has are read (verified) and cut into
//! parts ([`dartsync_shared::chunk::parts`]); for each missing chunk the
//! holder sends the chunk's part list (`GetChunkParts`), the receiver
//! copies the parts it has and asks for the others (`GetPart`), and writes
//! the chunk once the whole of it hashes to the chunk's hash. A chunk whose
//! parts are mostly new is left to the network phase, fetched whole.
//!
//! # Bounds
//! - Only when the replaced base chunks total at most [`MAX_BASE_BYTES`]
//!   (they are held in memory while this step runs); a bigger rewrite is
//!   fetched in whole chunks as before.
//! - At most `2 × replaced chunks + 2` missing chunks are refined, each at
//!   least [`DownloadLimits::refine_min_chunk`] long (32 KiB): appended
//!   data has no local parts and would only cost round trips.
//! - Requests go in windows of `in_flight_per_holder`, every answer of a
//!   window is read before the next, so the connection is clean (nothing
//!   in flight) whenever this step returns `Ok`.
//!
//! # Trust
//! Local parts are verified against the part hashes the holder sent, and
//! fetched parts against their hashes; a chunk that still fails its own
//! hash means the part list lied, and the holder is dropped as a liar.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use dartsync_shared::chunk::parts::{PartInfo, cut_parts, part_offsets, parts_tile};
use dartsync_shared::proto::p2p::{P2pRequest, P2pResponse};
use dartsync_shared::{ChunkInfo, ContentHash, FileRecord};

use dartsync_shared::proto::ptp::Holder;
use tokio_util::sync::CancellationToken;

use super::Downloader;
use super::error::HolderError;
use super::links::{Reader, Writer};
use super::worker::{self, Conn, DownloadLimits, Group, HolderStats};
use crate::transfer::chunk_source::{ChunkSource, OpenCandidates};

/// Most bytes of replaced base chunks read and held for refinement.
pub(super) const MAX_BASE_BYTES: u64 = 16 * 1024 * 1024;

/// A refinement fetches a chunk part by part only if at least this share
/// of it (1 / `LOCAL_SHARE_DIVISOR`) is available locally.
const LOCAL_SHARE_DIVISOR: u64 = 4;

/// The parts of the base chunks a new version no longer has, with their
/// bytes: what refinement copies from.
#[derive(Debug, Default)]
pub(super) struct LocalParts {
    /// Bytes of each replaced base chunk read (verified).
    chunks: Vec<Vec<u8>>,
    /// Part hash -> (index into `chunks`, offset, length).
    parts: HashMap<ContentHash, (usize, u32, u32)>,
}

impl LocalParts {
    /// Reads the chunks of `base` that `new` does not have, through
    /// `source` (verified), and cuts them into parts. `None` when there are
    /// none, or more than [`MAX_BASE_BYTES`] of them. Blocking.
    pub(super) fn load(base: &[ChunkInfo], new: &[ChunkInfo], source: &dyn ChunkSource) -> Option<LocalParts> {
        let kept: HashSet<ContentHash> = new.iter().map(|c| c.hash).collect();
        let mut seen = HashSet::new();
        let replaced: Vec<&ChunkInfo> =
            base.iter().filter(|c| !kept.contains(&c.hash) && seen.insert(c.hash)).collect();
        let bytes: u64 = replaced.iter().map(|c| u64::from(c.len)).sum();
        if replaced.is_empty() || bytes > MAX_BASE_BYTES {
            return None;
        }
        let mut local = LocalParts::default();
        let mut open = OpenCandidates::default();
        for chunk in replaced {
            let Some(data) = open.read_verified(source, &source.locate(&chunk.hash, chunk.len), chunk.len, &chunk.hash)
            else {
                continue;
            };
            let index = local.chunks.len();
            for (at, part) in part_offsets(&cut_parts(&data)) {
                local.parts.entry(part.hash).or_insert((index, at, part.len));
            }
            local.chunks.push(data);
        }
        (!local.chunks.is_empty()).then_some(local)
    }

    /// Replaced base chunks read.
    pub(super) fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// The bytes of `part`, if a replaced base chunk has them.
    fn get(&self, part: &PartInfo) -> Option<&[u8]> {
        let &(index, at, len) = self.parts.get(&part.hash)?;
        (len == part.len).then(|| &self.chunks[index][at as usize..][..len as usize])
    }
}

/// What refinement did, for the download's accounting.
#[derive(Debug, Default)]
pub(super) struct Refined {
    /// Groups written (verified) by refinement, now done.
    pub(super) groups: Vec<usize>,
    /// Bytes written from local parts (every member offset counted).
    pub(super) bytes_local: u64,
    /// Bytes of parts received from the holder and accepted.
    pub(super) bytes_fetched: u64,
}

/// One refinement run over one connection.
pub(super) struct Refiner<'a> {
    pub(super) reader: &'a mut Reader,
    pub(super) writer: &'a mut Writer,
    pub(super) record: &'a FileRecord,
    pub(super) chunks: &'a [ChunkInfo],
    pub(super) groups: &'a [Group],
    pub(super) local: &'a LocalParts,
    pub(super) file: &'a Arc<File>,
    pub(super) limits: &'a DownloadLimits,
}

impl Refiner<'_> {
    /// Refines the `missing` groups it is worth refining (see the module
    /// docs), recording progress in `out` as it goes. `Ok` leaves the
    /// connection clean; `Busy` or `NotAvailable` from the holder end the
    /// step early without error (the network phase takes over). `Err` is
    /// the holder's failure; the connection must then be dropped.
    pub(super) async fn run(&mut self, missing: &[usize], out: &mut Refined) -> Result<(), HolderError> {
        let budget = 2 * self.local.chunk_count() + 2;
        let candidates: Vec<usize> = missing
            .iter()
            .copied()
            .filter(|&g| self.groups[g].len >= self.limits.refine_min_chunk)
            .take(budget)
            .collect();
        for g in candidates {
            let group = &self.groups[g];
            let first = self.chunks[group.members[0]];
            let request = P2pRequest::GetChunkParts { content: self.record.content, chunk: first };
            let parts = match self.exchange(vec![request]).await?.pop() {
                Some(P2pResponse::ChunkParts { hash, parts }) if hash == group.hash => parts,
                Some(P2pResponse::ChunkParts { .. }) => return Err(HolderError::Unexpected("parts of another chunk")),
                Some(P2pResponse::Busy | P2pResponse::NotAvailable) => return Ok(()),
                _ => return Err(HolderError::Unexpected("not a part list")),
            };
            if !parts_tile(&parts, group.len) {
                return Err(HolderError::Unexpected("a part list that does not tile its chunk"));
            }
            let local_bytes: u64 = parts.iter().filter_map(|p| self.local.get(p)).map(|b| b.len() as u64).sum();
            if local_bytes * LOCAL_SHARE_DIVISOR < u64::from(group.len) {
                continue;
            }
            let Some((bytes, fetched)) = self.assemble(first, &parts).await? else {
                return Ok(());
            };
            if ContentHash::of(&bytes) != group.hash {
                return Err(HolderError::HashMismatch { offset: first.offset });
            }
            let file = self.file.clone();
            let offsets: Vec<u64> = group.members.iter().map(|&i| self.chunks[i].offset).collect();
            let written = tokio::task::spawn_blocking(move || {
                offsets.iter().try_for_each(|&offset| file.write_all_at(&bytes, offset))
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
            if let Err(e) = written {
                // Left to the network phase, which reports a local write
                // failure as fatal for the download.
                tracing::debug!(path = %self.record.path, error = %e, "writing a refined chunk failed");
                return Ok(());
            }
            let all = u64::from(group.len) * group.members.len() as u64;
            out.groups.push(g);
            out.bytes_fetched += fetched;
            out.bytes_local += all - fetched;
        }
        Ok(())
    }

    /// The bytes of `chunk` from local `parts` and fetched ones, plus how
    /// many were fetched; `None` when the holder answered `Busy` or
    /// `NotAvailable` to a part.
    async fn assemble(&mut self, chunk: ChunkInfo, parts: &[PartInfo]) -> Result<Option<(Vec<u8>, u64)>, HolderError> {
        let mut bytes = vec![0u8; chunk.len as usize];
        let mut wanted = Vec::new();
        for (at, part) in part_offsets(parts) {
            match self.local.get(part) {
                Some(local) => bytes[at as usize..][..local.len()].copy_from_slice(local),
                None => wanted.push((at, *part)),
            }
        }
        let mut fetched = 0u64;
        let mut stopped = false;
        for window in wanted.chunks(self.limits.in_flight_per_holder.max(1)) {
            let requests = window
                .iter()
                .map(|&(at, part)| P2pRequest::GetPart {
                    content: self.record.content,
                    chunk,
                    at,
                    len: part.len,
                    hash: part.hash,
                })
                .collect();
            for (&(at, part), answer) in window.iter().zip(self.exchange(requests).await?) {
                match answer {
                    P2pResponse::Chunk { hash, bytes: got }
                        if hash == part.hash
                            && got.len() == part.len as usize
                            && ContentHash::of(&got) == part.hash =>
                    {
                        bytes[at as usize..][..got.len()].copy_from_slice(&got);
                        fetched += u64::from(part.len);
                    }
                    P2pResponse::Chunk { .. } => {
                        return Err(HolderError::HashMismatch { offset: chunk.offset + u64::from(at) });
                    }
                    P2pResponse::Busy | P2pResponse::NotAvailable => stopped = true,
                    _ => return Err(HolderError::Unexpected("not a part")),
                }
            }
            if stopped {
                return Ok(None);
            }
        }
        Ok(Some((bytes, fetched)))
    }

    /// Sends `requests` and reads one validated answer to each, in order.
    async fn exchange(&mut self, requests: Vec<P2pRequest>) -> Result<Vec<P2pResponse>, HolderError> {
        let n = requests.len();
        for request in &requests {
            self.writer.send(request).await.map_err(HolderError::Channel)?;
        }
        let timeout = self.limits.request_timeout;
        let mut answers = Vec::with_capacity(n);
        for _ in 0..n {
            let answer = tokio::time::timeout(timeout, self.reader.recv::<P2pResponse>())
                .await
                .map_err(|_| HolderError::Timeout(timeout))?
                .map_err(HolderError::Channel)?
                .ok_or(HolderError::Closed)?;
            answer.validate().map_err(HolderError::Protocol)?;
            answers.push(answer);
        }
        Ok(answers)
    }
}

/// What [`Downloader::refine`] works on, borrowed from the download.
pub(super) struct RefineStep<'a> {
    pub(super) record: &'a FileRecord,
    pub(super) chunks: &'a Arc<[ChunkInfo]>,
    pub(super) groups: &'a [Group],
    pub(super) file: &'a Arc<File>,
    pub(super) holders: &'a [Holder],
    pub(super) stats: &'a mut [HolderStats],
    pub(super) conn: &'a mut Option<(usize, Conn)>,
}

impl Downloader {
    /// Step 2½ ([`refine`]): chunks replacing base chunks fetched part by
    /// part. Uses the connection the list came over, else a kept or a new
    /// one to the first usable holder, and keeps it afterwards; a holder that lies is marked dropped. What
    /// fails otherwise is left to the network phase.
    pub(super) async fn refine(
        &self,
        step: &mut RefineStep<'_>,
        base: &[ChunkInfo],
        missing: &[usize],
        cancel: &CancellationToken,
    ) -> Refined {
        let mut out = Refined::default();
        let worth_it = missing.iter().any(|&g| step.groups[g].len >= self.ctx.limits.refine_min_chunk);
        if !worth_it {
            return out;
        }
        let local = {
            let (source, base, chunks) = (self.source.clone(), base.to_vec(), step.chunks.clone());
            tokio::task::spawn_blocking(move || LocalParts::load(&base, &chunks, source.as_ref())).await
        };
        let Ok(Some(local)) = local else { return out };
        // The link the list came over, else a kept one, else a new one: a
        // burst of edits must not cost a handshake each.
        let (i, (mut reader, mut writer)) = match step.conn.take() {
            Some((i, conn)) => (i, conn.split()),
            None => {
                let Some(i) = step.stats.iter().position(|s| s.dropped.is_none()) else { return out };
                let holder = &step.holders[i];
                match worker::take_or_connect(holder, &self.ctx).await {
                    Ok((reader, writer, _kept)) => (i, (reader, writer)),
                    Err(e) => {
                        tracing::debug!(peer = %holder.peer_id.fmt_short(), error = %e, "cannot refine chunks");
                        return out;
                    }
                }
            }
        };
        let mut refiner = Refiner {
            reader: &mut reader,
            writer: &mut writer,
            record: step.record,
            chunks: step.chunks,
            groups: step.groups,
            local: &local,
            file: step.file,
            limits: &self.ctx.limits,
        };
        let result = tokio::select! {
            () = cancel.cancelled() => Err(None),
            r = refiner.run(missing, &mut out) => r.map_err(Some),
        };
        let holder = &step.holders[i];
        let stats = &mut step.stats[i];
        stats.bytes += out.bytes_fetched;
        stats.chunks += out.groups.len() as u64;
        match result {
            // Clean: kept for the network phase, which takes it first.
            Ok(()) => self.ctx.links.put(holder.peer_id, holder.addr, reader, writer),
            Err(None) => {}
            Err(Some(e)) if e.is_lie() => {
                tracing::warn!(peer = %holder.peer_id.fmt_short(), addr = %holder.addr, error = %e, "holder dropped: it sent bad data");
                stats.dropped = Some(e);
            }
            Err(Some(e)) => tracing::debug!(peer = %holder.peer_id.fmt_short(), error = %e, "refining chunks stopped"),
        }
        tracing::debug!(
            path = %step.record.path, refined = out.groups.len(), bytes_local = out.bytes_local,
            bytes_fetched = out.bytes_fetched, "chunks refined from the base"
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::chunk_source::MemoryChunkSource;
    use dartsync_shared::chunk::{ChunkParams, chunk_bytes};
    use dartsync_shared::test_util::det_bytes;

    #[test]
    fn local_parts_come_from_replaced_chunks_only_and_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let params = ChunkParams::for_piece_len(64 * 1024);
        let data = det_bytes(1, 2 * 1024 * 1024);
        let path = dir.path().join("old");
        std::fs::write(&path, &data).unwrap();
        let source = MemoryChunkSource::new();
        let old = source.add_file(&path, params).unwrap();
        let mut edited = data.clone();
        edited[1024 * 1024] ^= 1;
        let new = chunk_bytes(&edited, params);
        let local = LocalParts::load(&old.chunks, &new.chunks, &source).unwrap();
        assert_eq!(local.chunk_count(), 1, "one chunk replaced by a one-byte overwrite");
        // Every part of the new version of that chunk but the edited one is local.
        let changed = new.chunks.iter().find(|c| !old.chunks.iter().any(|o| o.hash == c.hash)).unwrap();
        let bytes = &edited[changed.offset as usize..][..changed.len as usize];
        let parts = cut_parts(bytes);
        let missing: Vec<_> = parts.iter().filter(|p| local.get(p).is_none()).collect();
        assert_eq!(missing.len(), 1, "{} parts", parts.len());
        for (at, p) in part_offsets(&parts) {
            if let Some(found) = local.get(p) {
                assert_eq!(found, &bytes[at as usize..][..p.len as usize]);
            }
        }
        // Nothing replaced: nothing to load. A rewrite over the bound: none either.
        assert!(LocalParts::load(&old.chunks, &old.chunks, &source).is_none());
        let huge = vec![ChunkInfo { offset: 0, len: (MAX_BASE_BYTES + 1) as u32, hash: ContentHash::of(b"x") }];
        assert!(LocalParts::load(&huge, &[], &source).is_none());
    }

    #[test]
    fn stale_local_chunks_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let params = ChunkParams::for_piece_len(64 * 1024);
        let path = dir.path().join("old");
        std::fs::write(&path, det_bytes(2, 512 * 1024)).unwrap();
        let source = MemoryChunkSource::new();
        let old = source.add_file(&path, params).unwrap();
        // The file changed on disk since it was indexed: nothing verifies.
        std::fs::write(&path, det_bytes(3, 512 * 1024)).unwrap();
        assert!(LocalParts::load(&old.chunks, &[], &source).is_none());
    }
}
