"""Several local Kafka nodes in one KRaft cluster, for the replication and failover tests."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from streams.localkafka.base import Progress
from streams.localkafka.network import HOST, free_port
from streams.localkafka.node import LocalKafka, new_cluster_id


class LocalKafkaCluster:
    """Several :class:`LocalKafka` nodes, each a broker and a controller, in one KRaft cluster.

    For tests of replication and failover: every node listens on 127.0.0.1 on
    ports chosen up front, formats its storage with the same cluster id, and
    votes in one controller quorum; the internal topics (consumer offsets,
    transactions) get ``size`` replicas, at most 3, and need all but one in sync.

    Parameters
    ----------
    size
        Nodes (3 tolerate one stopped).
    data_dir
        Parent of the nodes' directories (``node-1`` ...); a temporary
        directory, removed by :meth:`close`, when ``None``.
    heap
        Maximum JVM heap of each node.
    progress
        Receives progress lines; stderr when ``None``.

    Examples
    --------
    >>> with LocalKafkaCluster(3) as cluster:  # doctest: +SKIP
    ...     cluster.stop_node(2)
    ...     cluster.start_node(2)
    """

    def __init__(self, size: int = 3, data_dir: Path | None = None, *, heap: str = "384m",
                 progress: Progress | None = None) -> None:
        if size < 1:
            message = f"a cluster needs at least one node, not {size}"
            raise ValueError(message)
        self._owns_data_dir = data_dir is None
        self.data_dir = (Path(tempfile.mkdtemp(prefix="txwatch-kafka-cluster-"))
                         if data_dir is None else data_dir).resolve()
        replicas = min(size, 3)
        insync = max(1, replicas - 1)
        ports: list[int] = []
        while len(ports) < 2 * size:
            port = free_port()
            if port not in ports:
                ports.append(port)
        voters = ",".join(f"{node}@{HOST}:{ports[2 * (node - 1) + 1]}"
                          for node in range(1, size + 1))
        cluster_id = new_cluster_id()
        internal = {
            "offsets.topic.replication.factor": str(replicas),
            "transaction.state.log.replication.factor": str(replicas),
            "transaction.state.log.min.isr": str(insync),
            "share.coordinator.state.topic.replication.factor": str(replicas),
            "share.coordinator.state.topic.min.isr": str(insync),
        }
        self.nodes = [
            LocalKafka(self.data_dir / f"node-{node}", port=ports[2 * (node - 1)],
                       controller_port=ports[2 * (node - 1) + 1], heap=heap, node_id=node,
                       cluster_id=cluster_id, quorum_voters=voters, extra_properties=internal,
                       progress=progress)
            for node in range(1, size + 1)
        ]

    @property
    def bootstrap(self) -> str:
        """Every node's client address, comma-separated."""
        return ",".join(node.bootstrap for node in self.nodes)

    def node(self, node_id: int) -> LocalKafka:
        """The node with that ``node.id`` (1 to ``size``)."""
        return self.nodes[node_id - 1]

    def start(self) -> None:
        """Launch every node, then wait until each answers (a quorum forms only then)."""
        started = [(node, node.launch()) for node in self.nodes if not node.running]
        try:
            for node, at in started:
                node.wait_ready(at)
        except BaseException:
            self.stop(timeout=5.0)
            raise

    def stop_node(self, node_id: int) -> None:
        """Stop one node cleanly (its partitions' leadership moves to the others first)."""
        self.node(node_id).stop()

    def start_node(self, node_id: int) -> None:
        """Start a stopped node again on its ports and data."""
        self.node(node_id).start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop every node (see :meth:`LocalKafka.stop`).

        The last nodes to go cannot shut down cleanly without a controller
        quorum: give a short ``timeout`` when their data does not matter.
        """
        for node in self.nodes:
            node.stop(timeout)

    def close(self) -> None:
        """Stop every node and remove the data if this object created the directory."""
        self.stop(timeout=5.0)
        for node in self.nodes:
            node.close()
        if self._owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalKafkaCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
