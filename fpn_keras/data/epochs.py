"""Training epochs as a pure function of (seed, epoch), so that a run can start at any batch.

Epoch ``e`` of ``N`` elements visits ``M`` positions (``M = N // B * B`` with
``drop_remainder``, else ``N``); position ``p`` holds element
``index_shuffle(p, key(seed, e), N - 1)`` (a stateless permutation of the element
indices, ``tf.random.experimental.index_shuffle``) and gets the augmentation seed
``fold_in(key(seed, e), p)`` (int64 [2]). Nothing depends on the epochs or batches
before it: starting at (epoch e, batch k) gives exactly batches k.. of epoch e, and
costs the lookups of the elements it trains on only.

Lookups need a source with random access (``tf.data.experimental.at``):
``from_tensor_slices`` -> map / take / skip / concatenate / cache chains, i.e. the
synthetic generator and the COCO / VOC record tables (images are decoded after the
lookup: skipped batches cost nothing; a final ``ignore_errors`` is re-applied after
the lookup: an image that passed the loaders' checks but fails to decode costs its
position, and the batches after it in that run are shifted by one against a run resumed
past it; TF logs each drop, and the loaders' header check catches undecodable JPEGs
first). With ``cache`` the first lookup decodes the whole source once (the
work of one epoch). Other sources (TFDS) fall back to a shuffle buffer seeded by
(seed, e), rebuilt each epoch: exact too, but a start at batch k decodes the first
``k * B`` elements of epoch e and the buffer (at most one epoch of input).
"""

import functools
import logging
import random

import tensorflow as tf

logger = logging.getLogger("fpn_keras.data")

# Python classes of the tf.data ops that support random access (TF 2.21); any
# other op in a source's chain selects the shuffle-buffer path.
_RANDOM_ACCESS = {"_TensorSliceDataset", "_TensorDataset", "_RangeDataset", "_MapDataset",
                  "_ParallelMapDataset", "CacheDataset", "_TakeDataset", "_SkipDataset",
                  "_ConcatenateDataset", "_AssertCardinalityDataset", "_PrefetchDataset",
                  "_OptionsDataset"}


@functools.lru_cache(maxsize=None)
def unknown_class_names():
    """The Python class names this TensorFlow gives the tf.data ops that `_RANDOM_ACCESS`
    and `random_access_view` expect, where they differ from TF 2.21's (a set; empty when
    all match). A rename would not lose the data position (the shuffle-buffer path is
    exact too) but would make every resume decode the epoch up to its start batch, so
    `random_access_view` warns once (tests/test_keras_workarounds.py checks it is empty)."""
    source = tf.data.Dataset.from_tensor_slices([0, 1])
    mapped = source.map(lambda x: x)
    built = {"_TensorSliceDataset": source, "_MapDataset": mapped,
             "_ParallelMapDataset": source.map(lambda x: x, num_parallel_calls=2),
             "_TakeDataset": mapped.take(1), "_SkipDataset": mapped.skip(1), "CacheDataset": mapped.cache(),
             "_ConcatenateDataset": mapped.concatenate(mapped), "_PrefetchDataset": mapped.prefetch(1),
             "_IgnoreErrorsDataset": mapped.ignore_errors(),
             "_AssertCardinalityDataset": mapped.apply(tf.data.experimental.assert_cardinality(2))}
    unknown = {f"{expected} (now {type(d).__name__})" for expected, d in built.items() if type(d).__name__ != expected}
    attributes = [(built["_IgnoreErrorsDataset"], "_input_dataset"),
                  (built["_ConcatenateDataset"], "_dataset_to_concatenate")]
    unknown |= {f"{type(d).__name__}.{name} (missing)" for d, name in attributes if not hasattr(d, name)}
    if unknown:
        logger.warning("fpn_keras.data.epochs: TensorFlow %s names tf.data's classes differently from TF 2.21 "
                       "(%s): training and resuming stay exact, but a resumed run decodes its epoch up to the "
                       "start batch; update epochs._RANDOM_ACCESS", tf.__version__, ", ".join(sorted(unknown)))
    return frozenset(unknown)


def _supports_random_access(dataset):
    stack = [dataset]
    while stack:
        node = stack.pop()
        if type(node).__name__ not in _RANDOM_ACCESS:
            return False
        stack.extend(node._inputs())  # pylint: disable=protected-access
    return True


def random_access_view(dataset):
    """-> (dataset with the same elements and random access, drop_failures: bool, part_starts),
    or None.

    A final ``ignore_errors`` (the COCO / VOC loaders' decode failures) is removed
    (``drop_failures`` True: the caller re-applies it after the lookups), also on
    both sides of a ``concatenate``; part_starts: the first index of each
    concatenated part (for ``warm``)."""
    unknown_class_names()  # warns once if this TensorFlow renamed them
    name = type(dataset).__name__
    if name == "_IgnoreErrorsDataset":
        inner = random_access_view(dataset._input_dataset)  # pylint: disable=protected-access
        return None if inner is None else (inner[0], True, inner[2])
    if name == "_ConcatenateDataset":
        first = random_access_view(dataset._input_dataset)  # pylint: disable=protected-access
        second = random_access_view(dataset._dataset_to_concatenate)  # pylint: disable=protected-access
        if first is None or second is None:
            return None
        offset = int(first[0].cardinality())
        return (first[0].concatenate(second[0]), first[1] or second[1],
                first[2] + [offset + start for start in second[2]])
    if int(dataset.cardinality()) <= 0 or not _supports_random_access(dataset):
        return None
    return dataset, False, [0]


def warm(dataset, part_starts):
    """Looks up the first element of each part once, eagerly.

    Works around a TF 2.21 crash: a map's function is instantiated for random access
    by the first caller and kept; when that caller is a tf.data iterator, the
    function dies with it and the next iterator's lookup segfaults. Looked up
    eagerly first, it lives as long as the process."""
    for start in part_starts:
        try:
            tf.data.experimental.at(dataset, start)
        except tf.errors.OpError:  # e.g. an undecodable image: the function is instantiated anyway
            pass


def resolve_seed(seed):
    """The pipeline's int seed: ``seed``, or a fresh random one for None."""
    return random.SystemRandom().randrange(2**31) if seed is None else int(seed)


def epoch_key(seed, epoch):
    """int64 [2] key of epoch ``epoch`` (scalar tensor) under the int ``seed`` (the
    Philox-based stateless ops use both halves: [hash(seed), epoch])."""
    base = tf.constant([seed, 0x5EED], tf.int64)
    return tf.random.experimental.stateless_fold_in(base, tf.cast(epoch, tf.int64))


def element_index(key, position, num_elements):
    """Index of the element at ``position`` of the epoch keyed by ``key`` (a permutation of
    0..num_elements-1 over the positions 0..num_elements-1)."""
    return tf.random.experimental.index_shuffle(tf.cast(position, tf.int64), key,
                                                 tf.cast(num_elements, tf.int64) - 1)


def element_seed(key, position):
    """int64 [2] stateless augmentation seed of ``position`` in the epoch keyed by ``key``."""
    return tf.random.experimental.stateless_fold_in(key, tf.cast(position, tf.int64))


def epoch_elements(elements, random_access, drop_failures, epoch, first, num_positions, num_elements,
                   seed, shuffle_buffer, deterministic):
    """Positions first..num_positions-1 of ``epoch`` -> dataset of (element, element_seed [2]).

    elements: the source (from ``random_access_view`` when ``random_access``; its
    ``drop_failures`` re-applies ``ignore_errors`` after the lookups); epoch, first:
    int64 scalar tensors; num_positions, num_elements: ints, or None (unknown size, shuffle path)."""
    key = epoch_key(seed, epoch)
    if random_access:

        def lookup(position):
            index = element_index(key, position, num_elements)
            return tf.data.experimental.at(elements, index), element_seed(key, position)

        dataset = tf.data.Dataset.range(first, num_positions).map(
            lookup, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
        return dataset.ignore_errors(log_warning=True) if drop_failures else dataset
    shuffle_seed = tf.random.stateless_uniform([], key, minval=0, maxval=2**62, dtype=tf.int64)
    # shuffle's seed logic compares a tensor seed with 0 when the global seed is 0 (an error
    # in graph mode): a fixed graph-level seed avoids it and keeps the order independent of
    # the process's global seed.
    graph = tf.compat.v1.get_default_graph()
    previous, graph.seed = graph.seed, 0x5EED
    try:
        dataset = elements.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    finally:
        graph.seed = previous
    if num_positions is not None:
        dataset = dataset.take(num_positions)
    # The skipped elements are read (decoded) but not augmented.
    return dataset.enumerate().skip(first).map(lambda position, element: (element, element_seed(key, position)))
