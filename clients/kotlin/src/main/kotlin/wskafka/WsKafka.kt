package wskafka

import kotlinx.coroutines.CompletableDeferred
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.ExperimentalCoroutinesApi
import kotlinx.coroutines.Job
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.MutableSharedFlow
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.SharedFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asSharedFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.flow.buffer
import kotlinx.coroutines.flow.callbackFlow
import kotlinx.coroutines.launch
import kotlinx.coroutines.withTimeout
import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonArray
import kotlinx.serialization.json.JsonElement
import kotlinx.serialization.json.JsonNull
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.JsonPrimitive
import kotlinx.serialization.json.booleanOrNull
import kotlinx.serialization.json.buildJsonObject
import kotlinx.serialization.json.contentOrNull
import kotlinx.serialization.json.int
import kotlinx.serialization.json.jsonArray
import kotlinx.serialization.json.jsonObject
import kotlinx.serialization.json.jsonPrimitive
import kotlinx.serialization.json.long
import kotlinx.serialization.json.longOrNull
import kotlinx.serialization.json.put
import okhttp3.OkHttpClient
import okhttp3.Request
import okhttp3.Response
import okhttp3.WebSocket
import okhttp3.WebSocketListener
import java.util.UUID
import kotlin.random.Random

/**
 * A connection to a wskafka hub (docs/protocol.md), with the browser client's guarantees:
 * first-frame auth with a token from [token] (asked again on every connect and when the hub
 * says the token is `expiring`), reconnects with jittered backoff, every subscription
 * resumed from the next offset of each partition (no gap, no repeat), every unanswered
 * publish resent with its `publish_id` and age (written once), and its own `ping` after a
 * silence, since a dead network may never close the socket.
 *
 * All state lives on one coroutine that takes OkHttp's callbacks and the API's calls in
 * order, so nothing is locked. [urls] are tried in turn, one per reconnect (hubs behind no
 * balancer).
 */
class WsKafka(
    private val urls: List<String>,
    private val token: suspend () -> String,
    private val options: Options = Options(),
    private val http: OkHttpClient = OkHttpClient(),
) {
    constructor(url: String, token: suspend () -> String, options: Options = Options()) :
        this(listOf(url), token, options)

    /** Delays in milliseconds; see the README's "The Kotlin client". */
    data class Options(
        val backoffMinMs: Long = 250,
        val backoffMaxMs: Long = 10_000,
        /** Silence after which the client pings, and how long it then waits for any frame. */
        val heartbeatIntervalMs: Long = 15_000,
        val heartbeatTimeoutMs: Long = 5_000,
        /** A publish with no answer after this long fails with code `timeout`. */
        val publishTimeoutMs: Long = 60_000,
    )

    private val state_ = MutableStateFlow(ConnectionState.CONNECTING)

    /** `CONNECTING`, `OPEN`, `RECONNECTING` or `CLOSED`. */
    val state: StateFlow<ConnectionState> = state_.asStateFlow()

    private val events_ = MutableSharedFlow<Event>(extraBufferCapacity = 1024)

    /** What is not a message: lost records, lagged closes, joins and leaves, signals, statuses, errors. */
    val events: SharedFlow<Event> = events_.asSharedFlow()

    @OptIn(ExperimentalCoroutinesApi::class)
    private val scope = CoroutineScope(SupervisorJob() + Dispatchers.Default.limitedParallelism(1))

    /** Everything that touches the state, run in order by one coroutine. */
    private val inbox = Channel<() -> Unit>(Channel.UNLIMITED)

    private var socket: WebSocket? = null
    private var authenticated = false
    private var attempt = 0
    private var nextUrl = 0
    private var nextId = 1L
    private var heard = 0L
    private var heartbeat: Job? = null
    private val subscriptions = LinkedHashMap<Pair<String, String?>, Subscription>()
    private val publishes = LinkedHashMap<String, Pending>()
    private val requests = HashMap<String, CompletableDeferred<JsonObject>>()
    private var watching: List<String> = emptyList()

    init {
        scope.launch { for (task in inbox) task() }
        run { connect() }
    }

    // -- the API ------------------------------------------------------------------------

    /**
     * The messages of [topic], or with [key] of one room of it, from [from]: subscribes when
     * collected and unsubscribes when the collector stops. Across reconnects it resumes from
     * the next offset of each partition: every record once, in offset order per partition.
     * Records a resume could not recover come as [Event.Lost]. A refusal (say `forbidden`)
     * ends the flow with a [WsKafkaException].
     */
    fun subscribe(
        topic: String,
        key: String? = null,
        from: Start = Start.Latest,
        presence: Boolean = false,
        signals: Boolean = false,
    ): Flow<Message> = callbackFlow<Message> {
        val subscription = Subscription(topic, key, from, presence, signals) { message -> trySend(message) }
        subscription.ended = { error -> close(error) }
        run {
            subscriptions.remove(topic to key)?.ended?.invoke(WsKafkaException("replaced", "subscribed again"))
            subscriptions[topic to key] = subscription
            if (authenticated) sendSubscribe(subscription)
        }
        awaitClose {
            run {
                if (subscriptions[topic to key] === subscription) {
                    subscriptions.remove(topic to key)
                    if (authenticated) send(frame("unsubscribe", topic, key))
                }
            }
        }
    }.buffer(Channel.UNLIMITED)

    /**
     * Publishes one record; returns its position once Kafka has it. Sent again after a
     * reconnect with the same [publishId] and its age, which the hub answers with the record
     * already written: never stored twice. Throws [WsKafkaException] with the hub's code,
     * `timeout` after [Options.publishTimeoutMs], or `closed`.
     */
    suspend fun publish(
        topic: String,
        payload: JsonElement,
        key: String? = null,
        headers: Map<String, String> = emptyMap(),
        publishId: String = UUID.randomUUID().toString(),
    ): Ack {
        val answer = CompletableDeferred<JsonObject>()
        val pending = Pending(publishId, answer) { id, extra ->
            buildJsonObject {
                put("type", "publish")
                put("id", id)
                put("topic", topic)
                put("payload", payload)
                put("publish_id", publishId)
                if (key != null) put("key", key)
                if (headers.isNotEmpty()) put("headers", JsonObject(headers.mapValues { JsonPrimitive(it.value) }))
                extra.forEach { (name, value) -> put(name, value) }
            }
        }
        run {
            publishes[publishId] = pending
            if (authenticated) sendPublish(pending)
        }
        try {
            val reply = withTimeout(options.publishTimeoutMs) { answer.await() }
            return Ack(reply.string("topic")!!, reply.getValue("partition").jsonPrimitive.int, reply.getValue("offset").jsonPrimitive.long)
        } catch (e: kotlinx.coroutines.TimeoutCancellationException) {
            throw WsKafkaException("timeout", "no answer within ${options.publishTimeoutMs} ms; publish again with the same publishId")
        } finally {
            run { publishes.remove(publishId) }
        }
    }

    /** Stores how far the user has read (next offset per partition); by default, as far as the subscription delivered. */
    suspend fun commit(topic: String, key: String? = null, offsets: Map<Int, Long>? = null) {
        val positions = offsets ?: ask { subscriptions[topic to key]?.next?.toMap() } ?: return
        if (positions.isEmpty()) return
        request(frame("commit", topic, key) + ("offsets" to JsonObject(positions.map { (p, o) -> p.toString() to JsonPrimitive(o) }.toMap())))
    }

    /** A page of past records, newest page first: before [before] (each partition's end by default). */
    suspend fun history(topic: String, key: String? = null, before: Map<Int, Long>? = null, limit: Int? = null): Page {
        val fields = mutableMapOf<String, JsonElement>()
        if (before != null) fields["before"] = JsonObject(before.map { (p, o) -> p.toString() to JsonPrimitive(o) }.toMap())
        if (limit != null) fields["limit"] = JsonPrimitive(limit)
        return page(request(frame("history", topic, key) + fields))
    }

    /**
     * The page just older than what a collected subscription shows: the first call ends where
     * it started, so history meets the live stream with no gap and no repeat; each next call
     * goes further back. Oldest message first.
     */
    suspend fun older(topic: String, key: String? = null, limit: Int? = null): Page {
        val before: JsonElement = ask {
            val subscription = subscriptions[topic to key] ?: throw WsKafkaException("not_subscribed", "not subscribed to $topic")
            subscription.olderBefore ?: JsonPrimitive("subscribed")
        }
        val fields = mutableMapOf("before" to before)
        if (limit != null) fields["limit"] = JsonPrimitive(limit)
        var page: Page
        val messages = ArrayList<Message>()
        do {
            val reply = request(frame("history", topic, key) + fields)
            page = page(reply)
            fields["before"] = reply.getValue("before")
            run { subscriptions[topic to key]?.olderBefore = reply.getValue("before") }
            messages.addAll(0, page.messages)
        } while (page.partial && messages.isEmpty())
        return page.copy(messages = messages)
    }

    /** The members of [topic] or its room [key] (a page of them: pass [Presence.next] as [after]). */
    suspend fun presence(topic: String, key: String? = null, after: String? = null): Presence {
        val reply = request(frame("presence", topic, key) + (if (after != null) mapOf("after" to JsonPrimitive(after)) else emptyMap()))
        return Presence(
            reply["members"]?.jsonArray?.map { it.jsonPrimitive.content },
            reply.getValue("count").jsonPrimitive.int,
            reply.string("next"),
        )
    }

    /** Which of [users] are online; with [watch], [Event.Status] follows each change (watched again after reconnects). */
    suspend fun online(users: List<String>, watch: Boolean = false): Map<String, Boolean> {
        if (watch) run { watching = users.toList() }
        val reply = request(buildJsonObject {
            put("type", "online")
            put("users", JsonArray(users.map { JsonPrimitive(it) }))
            put("watch", watch)
        })
        return reply.getValue("users").jsonObject.mapValues { it.value.jsonPrimitive.booleanOrNull ?: false }
    }

    /** An ephemeral signal to the room's current subscribers (those that asked for signals). */
    fun signal(topic: String, payload: JsonElement, key: String? = null) = run {
        if (authenticated) send(frame("signal", topic, key) + ("payload" to payload))
    }

    /** Closes for good: no reconnect; unanswered publishes and requests fail with `closed`. */
    fun close() {
        run {
            state_.value = ConnectionState.CLOSED
            heartbeat?.cancel()
            socket?.close(1000, null)
            socket = null
            val closed = WsKafkaException("closed", "the client was closed")
            publishes.values.forEach { it.answer.completeExceptionally(closed) }
            requests.values.forEach { it.completeExceptionally(closed) }
            subscriptions.values.forEach { it.ended?.invoke(closed) }
            subscriptions.clear()
            requests.clear()
            inbox.close()
            scope.cancel()
        }
    }

    // -- the connection -----------------------------------------------------------------

    /** Runs [task] on the state's coroutine. */
    private fun run(task: () -> Unit) {
        inbox.trySend(task)
    }

    /** Runs [task] on the state's coroutine and returns what it returns (or throws). */
    private suspend fun <T> ask(task: () -> T): T {
        val result = CompletableDeferred<T>()
        run { runCatching(task).fold({ result.complete(it) }, { result.completeExceptionally(it) }) }
        return result.await()
    }

    private fun connect() {
        if (state_.value == ConnectionState.CLOSED) return
        val url = urls[nextUrl++ % urls.size]
        authenticated = false
        heard = System.currentTimeMillis()
        val ws = http.newWebSocket(Request.Builder().url(url).build(), object : WebSocketListener() {
            override fun onOpen(webSocket: WebSocket, response: Response) {
                scope.launch {
                    val token = runCatching { token() }
                    run {
                        if (socket !== webSocket) return@run
                        token.fold(
                            { send(buildJsonObject { put("type", "auth"); put("id", "auth"); put("token", it) }) },
                            { webSocket.close(4000, "no token") },
                        )
                    }
                }
            }

            override fun onMessage(webSocket: WebSocket, text: String) = run {
                if (socket === webSocket) {
                    heard = System.currentTimeMillis()
                    receive(Json.parseToJsonElement(text).jsonObject)
                }
            }

            override fun onClosing(webSocket: WebSocket, code: Int, reason: String) {
                webSocket.close(1000, null)
            }

            override fun onClosed(webSocket: WebSocket, code: Int, reason: String) = run { if (socket === webSocket) lost() }

            override fun onFailure(webSocket: WebSocket, t: Throwable, response: Response?) = run {
                if (socket === webSocket) lost()
            }
        })
        socket = ws
        watch(ws)
    }

    /** The socket is gone: requests fail, publishes wait for the next one, and it reconnects after a backoff. */
    private fun lost() {
        socket = null
        authenticated = false
        heartbeat?.cancel()
        val dropped = WsKafkaException("disconnected", "the connection dropped")
        requests.values.forEach { it.completeExceptionally(dropped) }
        requests.clear()
        if (state_.value == ConnectionState.CLOSED) return
        state_.value = ConnectionState.RECONNECTING
        val ceiling = minOf(options.backoffMaxMs, options.backoffMinMs shl minOf(attempt++, 20))
        val delayMs = ceiling / 2 + (Random.nextDouble() * ceiling / 2).toLong()
        scope.launch {
            delay(delayMs)
            run { if (socket == null) connect() }
        }
    }

    /** Pings after a silence; gives the socket up when nothing answers (a dead network closes nothing). */
    private fun watch(ws: WebSocket) {
        heartbeat?.cancel()
        heartbeat = scope.launch {
            while (true) {
                delay(maxOf(1, heard + options.heartbeatIntervalMs - System.currentTimeMillis()))
                if (System.currentTimeMillis() - heard < options.heartbeatIntervalMs) continue
                val asked = System.currentTimeMillis()
                if (authenticated) send(buildJsonObject { put("type", "ping"); put("id", "ping-${nextId++}") })
                delay(options.heartbeatTimeoutMs)
                if (heard < asked && socket === ws) {
                    ws.cancel()
                    lost()
                    return@launch
                }
            }
        }
    }

    private fun send(frame: JsonObject) {
        socket?.send(frame.toString())
    }

    private fun receive(frame: JsonObject) {
        val id = frame["id"]?.jsonPrimitive?.contentOrNull
        when (frame.string("type")) {
            "message" -> {
                val message = message(frame)
                (subscriptions[message.topic to message.key] ?: subscriptions[message.topic to null])?.deliver(message)
            }
            "authenticated" -> if (id == "auth" && !authenticated) opened()
            "expiring" -> scope.launch {
                val fresh = runCatching { token() }.getOrNull() ?: return@launch
                run { send(buildJsonObject { put("type", "auth"); put("id", "refresh"); put("token", fresh) }) }
            }
            // Joins and leaves come batched, one frame per room and interval: told here as
            // one event per user, leaves first, as the browser client does.
            "presence_diff" -> {
                val topic = frame.string("topic")!!
                val key = frame.string("key")
                fun users(field: String) = frame[field]?.jsonArray?.map { it.jsonPrimitive.content } ?: emptyList()
                users("leaves").forEach { events_.tryEmit(Event.Membership(false, topic, key, it)) }
                users("joins").forEach { events_.tryEmit(Event.Membership(true, topic, key, it)) }
            }
            "signal" -> events_.tryEmit(Event.Signal(frame.string("topic")!!, frame.string("key"), frame.string("sender")!!, frame["payload"] ?: JsonNull))
            "status" -> events_.tryEmit(Event.Status(frame.string("user")!!, frame["online"]?.jsonPrimitive?.booleanOrNull ?: false))
            "lagged" -> events_.tryEmit(Event.Lagged(frame))
            "ack" -> publishes.values.firstOrNull { it.sentAs == id }?.answer?.complete(frame)
            "error" -> failed(frame, id)
            else -> requests.remove(id)?.complete(frame)
        }
    }

    private fun opened() {
        authenticated = true
        attempt = 0
        state_.value = ConnectionState.OPEN
        subscriptions.values.forEach { sendSubscribe(it) }
        publishes.values.forEach { sendPublish(it) }
        if (watching.isNotEmpty()) {
            send(buildJsonObject {
                put("type", "online")
                put("id", "watch-${nextId++}")
                put("users", JsonArray(watching.map { JsonPrimitive(it) }))
                put("watch", true)
            })
        }
    }

    private fun failed(frame: JsonObject, id: String?) {
        val error = WsKafkaException(
            frame.string("code") ?: "internal",
            frame.string("message") ?: "",
            frame.string("topic"),
            frame["retry_after_ms"]?.jsonPrimitive?.longOrNull,
        )
        publishes.values.firstOrNull { it.sentAs == id }?.let {
            it.answer.completeExceptionally(error)
            return
        }
        requests.remove(id)?.let {
            it.completeExceptionally(error)
            return
        }
        if (id?.startsWith("ping-") == true || id?.startsWith("watch-") == true) return
        val topic = frame.string("topic")
        val ended = subscriptions[topic to frame.string("key")]
        if (topic != null && ended != null) {
            subscriptions.remove(topic to frame.string("key"))
            ended.ended?.invoke(error)
        }
        events_.tryEmit(Event.Error(error))
    }

    /** A first attempt, or a resend saying how long ago the first left and which resend it is. */
    private fun sendPublish(pending: Pending) {
        val id = "p${nextId++}"
        pending.sentAs = id
        val now = System.nanoTime()
        val first = pending.firstSentAt
        if (first == null) {
            pending.firstSentAt = now
            send(pending.frame(id, emptyMap()))
        } else {
            pending.resends += 1
            val age = (now - first) / 1_000_000
            send(pending.frame(id, mapOf("age_ms" to JsonPrimitive(age), "attempt" to JsonPrimitive(pending.resends))))
        }
    }

    private fun sendSubscribe(subscription: Subscription) {
        val id = "s${nextId++}"
        val reply = CompletableDeferred<JsonObject>()
        requests[id] = reply
        val fields = mutableMapOf<String, JsonElement>("id" to JsonPrimitive(id), "from" to subscription.from())
        if (subscription.presence) fields["presence"] = JsonPrimitive(true)
        if (subscription.signals) fields["signals"] = JsonPrimitive(true)
        send(frame("subscribe", subscription.topic, subscription.key) + fields)
        reply.invokeOnCompletion { cause ->
            run {
                if (subscriptions[subscription.topic to subscription.key] !== subscription) return@run
                if (cause == null) {
                    subscription.started(reply.getCompleted())?.let { events_.tryEmit(it) }
                } else if (cause is WsKafkaException && cause.code == "unavailable") {
                    // A hub still starting: ask again on this socket (a reconnect resubscribes anyway).
                    val socketThen = socket
                    scope.launch {
                        delay(options.backoffMinMs * 4)
                        run { if (socket === socketThen && authenticated && subscriptions[subscription.topic to subscription.key] === subscription) sendSubscribe(subscription) }
                    }
                } else if (cause is WsKafkaException && cause.code != "disconnected") {
                    subscriptions.remove(subscription.topic to subscription.key)
                    subscription.ended?.invoke(cause)
                }
            }
        }
    }

    /** Sends a request on the current socket and waits for its reply. */
    private suspend fun request(frame: JsonObject): JsonObject {
        val reply = CompletableDeferred<JsonObject>()
        run {
            if (!authenticated) {
                reply.completeExceptionally(WsKafkaException("disconnected", "not connected"))
                return@run
            }
            val id = "r${nextId++}"
            requests[id] = reply
            send(JsonObject(frame + ("id" to JsonPrimitive(id))))
        }
        return reply.await()
    }

    private fun frame(type: String, topic: String, key: String?): JsonObject = buildJsonObject {
        put("type", type)
        put("topic", topic)
        if (key != null) put("key", key)
    }

    private operator fun JsonObject.plus(fields: Map<String, JsonElement>) = JsonObject(this.toMap() + fields)

    private operator fun JsonObject.plus(field: Pair<String, JsonElement>) = JsonObject(this.toMap() + field)

    /** One publish waiting for its answer, across sockets. */
    private class Pending(
        val publishId: String,
        val answer: CompletableDeferred<JsonObject>,
        val frame: (id: String, extra: Map<String, JsonElement>) -> JsonObject,
    ) {
        /** The request id of its latest attempt, which its answer carries. */
        var sentAs: String? = null
        var firstSentAt: Long? = null
        var resends = 0
    }

    /** One subscription and where it stands: the next offset per partition. */
    private class Subscription(
        val topic: String,
        val key: String?,
        val start: Start,
        val presence: Boolean,
        val signals: Boolean,
        val onMessage: (Message) -> Unit,
    ) {
        var ended: ((Throwable) -> Unit)? = null
        /** Null until the hub said where it starts. */
        var next: MutableMap<Int, Long>? = null
        var olderBefore: JsonElement? = null

        /** The first subscribe uses the caller's start; every later one resumes exactly. */
        fun from(): JsonElement = next?.let { positions ->
            buildJsonObject { put("offsets", JsonObject(positions.map { (p, o) -> p.toString() to JsonPrimitive(o) }.toMap())) }
        } ?: start.json()

        fun started(reply: JsonObject): Event? {
            val positions = next ?: HashMap<Int, Long>().also { next = it }
            reply["partitions"]?.jsonObject?.forEach { (partition, offset) ->
                positions.putIfAbsent(partition.toInt(), offset.jsonPrimitive.long)
            }
            val lost = reply["lost"]?.jsonObject ?: return null
            return Event.Lost(topic, key, lost.map { (partition, range) ->
                val r = range.jsonObject
                LostRange(partition.toInt(), r.getValue("from").jsonPrimitive.long, r.getValue("to").jsonPrimitive.long, r.string("reason") ?: "")
            })
        }

        fun deliver(message: Message) {
            val positions = next ?: HashMap<Int, Long>().also { next = it }
            val expected = positions[message.partition]
            if (expected != null && message.offset < expected) return // had it already
            positions[message.partition] = message.offset + 1
            onMessage(message)
        }
    }
}

enum class ConnectionState { CONNECTING, OPEN, RECONNECTING, CLOSED }

/** Where a subscription starts. */
sealed class Start {
    internal abstract fun json(): JsonElement

    object Latest : Start() { override fun json() = JsonPrimitive("latest") }
    object Earliest : Start() { override fun json() = JsonPrimitive("earliest") }
    /** Where the user's last `commit` left it, from any device. */
    object Committed : Start() { override fun json() = JsonPrimitive("committed") }
    data class Timestamp(val ms: Long) : Start() { override fun json() = buildJsonObject { put("timestamp", ms) } }
    data class Offsets(val next: Map<Int, Long>) : Start() {
        override fun json() = buildJsonObject { put("offsets", JsonObject(next.map { (p, o) -> p.toString() to JsonPrimitive(o) }.toMap())) }
    }
}

/** One Kafka record. [payload] is the record's JSON value (absent for values that are not JSON). */
data class Message(
    val topic: String,
    val partition: Int,
    val offset: Long,
    val timestamp: Long?,
    val key: String?,
    val sender: String?,
    val headers: Map<String, String?>,
    val payload: JsonElement?,
    val payloadBase64: String?,
)

data class Ack(val topic: String, val partition: Int, val offset: Long)

/** A history page, oldest message first; [before] per partition for the next older page. */
data class Page(val messages: List<Message>, val before: Map<Int, Long>, val oldest: Boolean, val partial: Boolean)

data class Presence(val members: List<String>?, val count: Int, val next: String?)

data class LostRange(val partition: Int, val from: Long, val to: Long, val reason: String)

sealed class Event {
    /** Records a resume could not recover (Kafka no longer holds them, or the replay bound). */
    data class Lost(val topic: String, val key: String?, val ranges: List<LostRange>) : Event()
    /** The hub is closing the socket for reading too slowly; the client resumes where it was. */
    data class Lagged(val frame: JsonObject) : Event()
    data class Membership(val joined: Boolean, val topic: String, val key: String?, val user: String) : Event()
    data class Signal(val topic: String, val key: String?, val sender: String, val payload: JsonElement) : Event()
    data class Status(val user: String, val online: Boolean) : Event()
    /** A refusal not tied to a call, such as an ended subscription. */
    data class Error(val error: WsKafkaException) : Event()
}

/** An `error` frame (or the client's own `timeout`, `closed`, `disconnected`); [code] is the protocol's. */
class WsKafkaException(
    val code: String,
    message: String,
    val topic: String? = null,
    val retryAfterMs: Long? = null,
) : Exception("$code: $message")

private fun JsonObject.string(name: String): String? = (this[name] as? JsonPrimitive)?.contentOrNull

private fun message(frame: JsonObject) = Message(
    topic = frame.string("topic")!!,
    partition = frame.getValue("partition").jsonPrimitive.int,
    offset = frame.getValue("offset").jsonPrimitive.long,
    timestamp = frame["timestamp"]?.jsonPrimitive?.longOrNull,
    key = frame.string("key"),
    sender = frame.string("sender"),
    headers = frame["headers"]?.jsonObject?.mapValues { (it.value as? JsonPrimitive)?.contentOrNull } ?: emptyMap(),
    payload = frame["payload"],
    payloadBase64 = frame.string("payload_base64"),
)

private fun page(frame: JsonObject) = Page(
    messages = frame["messages"]?.jsonArray?.map { message(it.jsonObject) } ?: emptyList(),
    before = frame["before"]?.jsonObject?.map { (p, o) -> p.toInt() to o.jsonPrimitive.long }?.toMap() ?: emptyMap(),
    oldest = frame["oldest"]?.jsonPrimitive?.booleanOrNull ?: false,
    partial = frame["partial"]?.jsonPrimitive?.booleanOrNull ?: false,
)
