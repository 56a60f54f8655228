namespace Axolotl;

/// <summary>
/// A mistake the user can fix (bad config, missing file, malformed data). The CLI prints the message alone and exits
/// with code 2; any other exception is a bug.
/// </summary>
public class UserError : Exception
{
    public UserError(string message) : base(message) { }
    public UserError(string message, Exception inner) : base(message, inner) { }
}
