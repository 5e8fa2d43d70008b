import 'dart:async';
import 'dart:convert';
import 'package:web_socket_channel/web_socket_channel.dart';

/// Samples from the server, across reconnects. Each has timestamp, active_users,
/// page_views, avg_session_duration and seq. Survives every fault `?chaos=` injects:
/// cuts and deploys reconnect and resume with since=; a connection silent for 30 s
/// (a stall, or a dead network) is abandoned; garbage, duplicates and late samples are
/// skipped.
Stream<Map<String, dynamic>> analytics(String host, {String query = ''}) async* {
  int? lastSeq;
  var delay = const Duration(seconds: 1);
  while (true) {
    final since = lastSeq == null ? '' : '&since=$lastSeq';
    final channel =
        WebSocketChannel.connect(Uri.parse('wss://$host/api/analytics?seq=1$query$since'));
    try {
      await for (final frame in channel.stream.timeout(const Duration(seconds: 30))) {
        final Object? msg;
        try {
          msg = jsonDecode(frame as String);
        } on FormatException {
          continue; // garbage: not JSON
        }
        if (msg is! Map<String, dynamic>) continue; // garbage: null
        if (msg['type'] == 'welcome') {
          delay = const Duration(seconds: 1);
          continue;
        }
        final seq = msg['seq'], users = msg['active_users'], views = msg['page_views'];
        if (seq is! int || users is! int || users < 0 || views is! int || views < 0) continue;
        if (lastSeq != null && seq <= lastSeq) continue; // a duplicate, or late
        lastSeq = seq;
        yield msg;
      }
      // Closed by the server: on a deploy (1001) or chaos=close (1012) its close reason
      // says when to come back.
      final reason = channel.closeReason;
      final hint = reason == null ? null : jsonDecode(reason);
      final after = hint is Map ? hint['reconnect_after_ms'] as int? : null;
      if (after != null) delay = Duration(milliseconds: after);
    } catch (_) {
      // Cut, silent or unreachable: back off, doubling up to 30 s.
      await channel.sink.close();
    }
    await Future.delayed(delay);
    delay = delay * 2 > const Duration(seconds: 30) ? const Duration(seconds: 30) : delay * 2;
  }
}

// In a widget:
// StreamBuilder<Map<String, dynamic>>(
//   stream: analytics('your-service.onrender.com'),
//   builder: (context, snap) => Text('${snap.data?['active_users'] ?? '–'} active users'),
// )
// Against failures: analytics('your-service.onrender.com', query: '&chaos=drop:30s,gap:0.1')
